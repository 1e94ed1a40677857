"""32 concurrent writers on one user: the session holds exactly the acknowledged events.

Ground truth for "acceptance order" is Redis itself: a ``MONITOR`` connection records
every ``EVALSHA`` in the order the server executed them. Replaying that log through a
model of the append script (dedup by event id, append, keep the newest N) must give
exactly the stored list; every acknowledged event must be accepted exactly once; each
writer's events keep that writer's order; retries count as duplicates.

The full run (10,000 events, uvicorn subprocess) is ``slow``; the default suite runs
the same check in-process on 2,000 events.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import socket
import threading
from dataclasses import dataclass, field

import httpx
import pytest

from service import keys
from skiprec.sessions import time_order

pytestmark = pytest.mark.reliability

HOT_USER = "hot"
WRITERS = 32
MAX_EVENTS = 200
END_MARKER = "monitor-end"


class Monitor:
    """Redis ``MONITOR`` on a raw socket, in a thread, until ``END_MARKER`` shows."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.commands: list[list[str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if b"] " not in line:
                    continue
                command = shlex.split(line.split(b"] ", 1)[1].decode())
                if command[:2] == ["ECHO", END_MARKER]:
                    return
                self.commands.append(command)

    def finish(self, redis_client) -> list[list[str]]:
        redis_client.echo(END_MARKER)
        self.thread.join(timeout=60)
        self.sock.close()
        return self.commands


def accepted_in_order(commands: list[list[str]], events_key: str) -> list[str]:
    """Replay the EVALSHA log like the script: fresh encoded events, oldest first."""
    seen: set[str] = set()
    fresh: list[str] = []
    for command in commands:
        if command[0].upper() != "EVALSHA" or command[3] != events_key:
            continue
        triples = command[13:]  # after 3 keys and 7 fixed arguments
        for event_id, encoded in zip(triples[::3], triples[1::3], strict=True):
            if event_id and event_id in seen:
                continue
            seen.add(event_id)
            fresh.append(encoded)
    return fresh


@dataclass
class Ledger:
    acknowledged: dict[str, int] = field(default_factory=dict)  # id -> writer
    order: dict[int, list[str]] = field(default_factory=dict)  # writer -> ids sent
    accepted: int = 0
    duplicates: int = 0
    expected_duplicates: int = 0


async def run_writers(client: httpx.AsyncClient, num_events: int, seed: int) -> Ledger:
    """Each writer posts its share one at a time; ~5% are retried, some batched."""
    ledger = Ledger()

    async def writer(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        mine = [i for i in range(num_events) if i % WRITERS == w]
        ledger.order[w] = []
        position = 0
        while position < len(mine):
            size = 3 if rng.random() < 0.1 else 1
            ids = [f"e{i}" for i in mine[position : position + size]]
            position += size
            events = [
                {"event_id": event_id, "user_id": HOT_USER, "track_id": "t1"}
                | {"type": "skip" if rng.random() < 0.3 else "play"}
                for event_id in ids
            ]
            if size > 1 and ledger.order[w]:
                # A batch that repeats this writer's previous, acknowledged event.
                events.append(events[0] | {"event_id": ledger.order[w][-1]})
                ledger.expected_duplicates += 1
            body = {"events": events} if len(events) > 1 else events[0]
            response = await client.post("/events", json=body)
            assert response.status_code == 202, response.text
            counts = response.json()
            ledger.accepted += counts["accepted"]
            ledger.duplicates += counts["duplicates"]
            for event_id in ids:
                ledger.acknowledged[event_id] = w
            ledger.order[w] += ids
            if rng.random() < 0.05:  # a client retry after a lost response
                retry = await client.post("/events", json=events[-1])
                assert retry.json() == {"accepted": 0, "duplicates": 1, "late": 0}
                ledger.duplicates += 1
                ledger.expected_duplicates += 1

    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    return ledger


def check(ledger: Ledger, commands: list[list[str]], stored: list[str], n: int) -> None:
    fresh = accepted_in_order(commands, keys.session_events_key(HOT_USER))
    fresh_ids = [encoded.split("|", 1)[0] for encoded in fresh]
    assert sorted(fresh_ids) == sorted(ledger.acknowledged)  # each exactly once
    assert len(fresh_ids) == n == ledger.accepted
    assert ledger.duplicates == ledger.expected_duplicates
    # The list is in event time (here each request's receive time, which need not
    # follow the order Redis ran the requests in), ties in acceptance order.
    in_time = time_order([float(encoded.rsplit("|", 1)[1]) for encoded in fresh])
    assert stored == [fresh[i] for i in in_time][-MAX_EVENTS:]  # the newest N
    position = {event_id: i for i, event_id in enumerate(fresh_ids)}
    for ids in ledger.order.values():
        indices = [position[event_id] for event_id in ids]
        assert indices == sorted(indices)  # a writer's acknowledged order is kept


async def test_concurrent_writers_in_process(
    make_client, make_settings, tmp_path, redis_process
):
    num_events = 2_000
    with redis_process(tmp_path / "redis") as server:
        redis_client = server.client()
        monitor = Monitor(server.port)
        settings = make_settings(redis_url=server.url, session_max_events=MAX_EVENTS)
        async with make_client(settings) as client:
            ledger = await run_writers(client, num_events, seed=1)
        commands = monitor.finish(redis_client)
        stored = redis_client.lrange(keys.session_events_key(HOT_USER), 0, -1)
        redis_client.close()
    check(ledger, commands, stored, num_events)


@pytest.mark.slow
async def test_concurrent_writers_over_http(
    tiny_bundle_dir, tmp_path, redis_process, api_process
):
    num_events = 10_000
    with redis_process(tmp_path / "redis") as server:
        redis_client = server.client()
        with api_process(
            tiny_bundle_dir,
            server.url,
            tmp_path / "api.log",
            session_max_events=str(MAX_EVENTS),
        ) as api:
            monitor = Monitor(server.port)
            limits = httpx.Limits(max_connections=WRITERS)
            async with httpx.AsyncClient(
                base_url=api.base_url, limits=limits, timeout=30
            ) as client:
                ledger = await run_writers(client, num_events, seed=2)
                session = (await client.get(f"/users/{HOT_USER}/session")).json()
            commands = monitor.finish(redis_client)
        stored = redis_client.lrange(keys.session_events_key(HOT_USER), 0, -1)
        redis_client.close()
    check(ledger, commands, stored, num_events)
    assert [e["event_id"] for e in session["events"]] == [
        encoded.split("|", 1)[0] for encoded in stored
    ]
