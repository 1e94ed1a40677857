"""Auto-pipelining on a real Redis: one round trip per loop turn, each caller's
replies its own, failures where they belong."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from service.autopipeline import AutoPipeline


class CountedClient:
    """The real client; counts the pipelines (round trips) it is asked for."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.round_trips = 0

    def pipeline(self, transaction: bool) -> Any:
        self.round_trips += 1
        return self.client.pipeline(transaction=transaction)


@pytest.fixture
async def counted(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield CountedClient(client)
    await client.aclose()


async def test_callers_of_one_turn_share_a_round_trip(counted):
    pipeline = AutoPipeline(counted)
    replies = await asyncio.gather(
        *(
            pipeline.execute([("SET", f"k{i}", i), ("INCRBY", f"k{i}", 10 * i)])
            for i in range(20)
        )
    )
    assert replies == [[True, 11 * i] for i in range(20)]
    assert counted.round_trips == 1


async def test_callers_of_later_turns_get_their_own(counted):
    pipeline = AutoPipeline(counted)
    assert await pipeline.execute([("SET", "a", 1)]) == [True]
    assert await pipeline.execute([("GET", "a")]) == ["1"]
    assert counted.round_trips == 2


async def test_a_refused_command_is_only_its_callers_reply(counted):
    pipeline = AutoPipeline(counted)
    await counted.client.set("text", "x")
    good, bad = await asyncio.gather(
        pipeline.execute([("SET", "n", 1), ("INCR", "n")]),
        pipeline.execute([("INCR", "text"), ("GET", "text")]),
    )
    assert good == [True, 2]
    assert isinstance(bad[0], redis_errors.ResponseError)
    assert bad[1] == "x"  # the caller's next command still ran
    assert counted.round_trips == 1


async def test_a_caller_that_stops_waiting_before_the_send_is_left_out(counted):
    pipeline = AutoPipeline(counted)
    gone = pipeline.execute([("SET", "gone", 1)])
    kept = pipeline.execute([("SET", "kept", 1)])
    gone.cancel()
    assert await kept == [True]
    assert await counted.client.exists("gone", "kept") == 1


async def test_a_failed_round_trip_fails_every_caller_in_it():
    # Nothing listens on the port: the connection is refused.
    client = aioredis.Redis(port=1, socket_connect_timeout=0.5)
    pipeline = AutoPipeline(client)
    first, second = (pipeline.execute([("PING",)]) for _ in range(2))
    for future in (first, second):
        with pytest.raises(redis_errors.ConnectionError):
            await future
    await client.aclose()


async def test_drain_waits_for_sends_on_their_way(counted):
    pipeline = AutoPipeline(counted)
    future = pipeline.execute([("SET", "late", 1)])
    await pipeline.drain()
    assert future.done() and future.result() == [True]
    assert await counted.client.get("late") == "1"
