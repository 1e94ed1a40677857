"""Ingestion at the store: Redis CPU and wall time per event of ``SessionStore.append``.

    python -m benchmarks.store --json docs/results/store_append.json

Below the HTTP layer, against a fresh ``redis-server`` per configuration: batches of
``--users`` listeners with one new event each (the shape of a client that flushes
many listeners' plays at once), and single events. Each listener first gets
``--history`` events and ``--served`` served lists (the state a listener who asks
for recommendations and then listens leaves: the dedup set, the list, the lists
waiting for their outcome), so the attribution and its counters run too. Each
configuration runs ``--repeats`` times, interleaved with the others, so that a
shared machine's drift falls on all of them alike. Redis CPU comes from the
server's own ``INFO cpu`` (user + system) over the timed calls only, so neither
the client's cost nor the set-up is in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import redis
import redis.asyncio as aioredis

from benchmarks.processes import redis_server, redis_server_binary
from service.outcomes import ServedList
from service.redis_client import packing_in_c
from service.session_store import SessionStore, StoreConfig
from skiprec.events import StoredEvent

CONFIG = StoreConfig(
    session_gap_s=1800.0,
    session_max_events=200,
    session_ttl_s=7 * 24 * 3600,
    dedup_ttl_s=24 * 3600,
    stream_maxlen=1_000_000,
)


@dataclass(frozen=True)
class Row:
    mode: str  # "per-slot": one script call per hash slot; "one call": per batch
    users: int  # events per call, one per listener
    repeat: int
    calls: int
    events: int
    redis_cpu_us_per_event: float
    wall_ms_per_call: float
    events_per_s: float  # one client, calls back to back


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _run(
    url: str, cross_slot: bool, users: int, calls: int, history: int, served: int
) -> Row:
    config = replace(CONFIG, cross_slot=cross_slot)
    client = aioredis.Redis.from_url(url)
    pool = client.connection_pool
    pool.connection_class = packing_in_c(pool.connection_class)  # as the service
    store = SessionStore(client, config)
    await store.register()
    now = time.time()
    population = [f"u{i}" for i in range(max(4 * users, 400))]
    for first in range(0, len(population), 10):
        past = [
            StoredEvent(f"h{j}", user, f"t{j}", j % 3 == 0, now - 100 + j * 0.01)
            for user in population[first : first + 10]
            for j in range(history)
        ]
        if past:
            await store.append(past, now - 50)
    for user in population:
        for j in range(served):
            tracks = tuple(f"t{x}" for x in range(10))
            kept = ServedList(
                f"r{user}-{j}", user, "control", "v1", "model", now, tracks
            )
            await store.keep_served(kept)
    probe = redis.Redis.from_url(url)
    cpu_before = _redis_cpu_s(probe)
    start = time.perf_counter()
    for call in range(calls):
        first = (call * users) % len(population)
        batch = [
            StoredEvent(
                f"e{call}-{j}",
                population[(first + j) % len(population)],
                f"t{j % 7}",
                j % 2 == 0,
                now + call * 0.001,
            )
            for j in range(users)
        ]
        await store.append(batch, now + call * 0.001)
    wall = time.perf_counter() - start
    cpu = _redis_cpu_s(probe) - cpu_before
    probe.close()
    await client.aclose()
    events = calls * users
    return Row(
        "one call" if cross_slot else "per-slot",
        users,
        0,
        calls,
        events,
        cpu / events * 1e6,
        wall / calls * 1e3,
        events / wall,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[100, 1])
    parser.add_argument("--events", type=int, default=20_000, help="per configuration")
    parser.add_argument("--history", type=int, default=40, help="events per listener")
    parser.add_argument("--served", type=int, default=8, help="lists per listener")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    binary = redis_server_binary()
    rows: list[Row] = []
    for repeat in range(args.repeats):
        for users in args.users:
            for cross_slot in (False, True):
                if users == 1 and cross_slot:
                    continue  # one listener is one slot either way
                with (
                    tempfile.TemporaryDirectory() as tmp,
                    redis_server(Path(tmp), binary=binary) as server,
                ):
                    row = asyncio.run(
                        _run(
                            server.url,
                            cross_slot,
                            users,
                            max(1, args.events // users),
                            args.history,
                            args.served,
                        )
                    )
                row = replace(row, repeat=repeat)
                rows.append(row)
                print(
                    f"{row.mode:>8} users={row.users:<4} repeat={repeat} "
                    f"redis {row.redis_cpu_us_per_event:6.1f} us/event  "
                    f"{row.wall_ms_per_call:7.3f} ms/call  "
                    f"{row.events_per_s:9,.0f} events/s",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
