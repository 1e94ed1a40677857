"""Replies lost between Redis and the service never lose or double an event.

A proxy of the test's own (``tcp_proxy.LossyProxy``) delivers the append pipeline
to Redis and drops the connection before the reply: the service cannot know whether
it ran. redis-py resends the call once on a new connection (the script recognises
its own ids and counts them as accepted once); the client retries any 503.
Whatever happens, every acknowledged event is in its session exactly once and in
the exported log exactly once. What a retry after a 503 cannot know is that its
first attempt ran: it reports those events as ``duplicates`` and the event counter
misses them (never counts them twice).
"""

from __future__ import annotations

import random
import time

import pytest
import redis.asyncio as aioredis

from service import keys
from service.event_log import iter_log
from service.session_store import APPEND_SCRIPT_SHA
from tests.service.tcp_proxy import LossyProxy

pytestmark = pytest.mark.reliability

TRIALS = 40
MAX_CLIENT_TRIES = 6


@pytest.fixture
def proxy(redis_url):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with LossyProxy(port) as lossy:
        yield lossy


def random_batch(rng: random.Random, trial: int, now: float) -> list[dict]:
    events = []
    for i in range(rng.randint(1, 5)):
        item = {
            "user_id": f"user{rng.randint(0, 3)}",
            "track_id": f"t{rng.randint(0, 30)}",
            "type": rng.choice(["play", "skip"]),
        }
        if rng.random() < 0.5:
            item["event_id"] = f"trial{trial}-{i}"
        else:  # no id: the service derives one from the client's timestamp
            item["timestamp"] = now - 100 + trial + i / 10
        events.append(item)
    return events


async def test_lost_replies_never_lose_or_double_an_event(
    make_client, make_settings, proxy, redis_url
):
    rng = random.Random(11)
    settings = make_settings(redis_url=proxy.url, redis_write_timeout_s=2.0)
    sent: dict[str, list[tuple[str, str]]] = {}
    accepted = duplicates = responses_503 = 0
    now = time.time()
    async with make_client(settings) as client:
        for trial in range(TRIALS):
            batch = random_batch(rng, trial, now)
            proxy.cut(APPEND_SCRIPT_SHA.encode(), rng.choice([1, 1, 2, 3]))
            for _ in range(MAX_CLIENT_TRIES):
                response = await client.post("/events", json={"events": batch})
                if response.status_code == 202:
                    answer = response.json()
                    accepted += answer["accepted"]
                    duplicates += answer["duplicates"]
                    break
                assert response.status_code == 503
                assert response.headers["Retry-After"]
                responses_503 += 1
            else:
                pytest.fail("the client's retries never got a 202")
            for item in batch:
                sent.setdefault(item["user_id"], []).append(
                    (item["track_id"], item["type"])
                )
        metrics = (await client.get("/metrics")).text
    proxy.cut(b"", 0)
    direct = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        sessions = {
            user: [
                (e["track_id"], e["type"]) for e in (await direct_session(direct, user))
            ]
            for user in sent
        }
        logged = [event async for event in iter_log(direct)]
        entries = await direct.xlen(keys.STREAM_KEY)
    finally:
        await direct.aclose()
    total = sum(len(events) for events in sent.values())
    assert proxy.cuts_done >= TRIALS
    assert responses_503 > 0  # some cuts outlasted redis-py's one resend
    assert accepted + duplicates == total  # every event answered for, once
    assert len(logged) == total
    for user, events in sent.items():
        assert sorted(sessions[user]) == sorted(events)
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("skiprec_events_total{")
    )
    assert accepted <= counted <= total  # never counted twice
    print(
        f"events={total} cuts={proxy.cuts_done} 503s={responses_503} "
        f"accepted={accepted} duplicates={duplicates} counted={counted:.0f} "
        f"log_entries={entries} exported={len(logged)}"
    )


async def direct_session(client, user: str) -> list[dict]:
    from skiprec.events import StoredEvent, event_type

    raw = await client.lrange(keys.session_events_key(user), 0, -1)
    events = [StoredEvent.decode(user, item) for item in raw]
    return [{"track_id": e.track_id, "type": event_type(e.skipped)} for e in events]
