"""Acknowledged events survive Redis restarts (AOF, as the compose file ships it).

- Graceful (SIGTERM or SHUTDOWN): every event that got a 202 is there afterwards, in
  order, and the API (never restarted) serves again at once.
- ``kill -9`` (``slow``): N trials per ``appendfsync`` policy count how many
  acknowledged events are missing after the restart; ``always`` must lose none.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from benchmarks.processes import RedisServer
from service import keys

pytestmark = pytest.mark.reliability

USERS = ("r0", "r1", "r2")
EVENTS_PER_USER = 150  # under SESSION_MAX_EVENTS (200): nothing is trimmed away


def event(user_id: str, i: int) -> dict[str, object]:
    kind = "skip" if i % 4 == 0 else "play"
    return {
        "event_id": f"{user_id}-{i}",
        "user_id": user_id,
        "track_id": f"t{i % 57}",
    } | {"type": kind}


async def post_everything(client) -> dict[str, list[str]]:
    """Single events and batches of 10, interleaving users; all must be acknowledged."""
    sent: dict[str, list[str]] = {user: [] for user in USERS}
    for start in range(0, EVENTS_PER_USER, 10):
        for user in USERS:
            chunk = [event(user, i) for i in range(start, start + 10)]
            if start % 20 == 0:
                responses = [await client.post("/events", json=e) for e in chunk]
            else:
                responses = [await client.post("/events", json={"events": chunk})]
            assert all(r.status_code == 202 for r in responses)
            sent[user] += [str(e["event_id"]) for e in chunk]
    return sent


@pytest.mark.parametrize("how", ["sigterm", "shutdown"])
async def test_graceful_restart_keeps_every_acknowledged_event(
    how, make_client, make_settings, tmp_path, redis_process
):
    with redis_process(tmp_path / "redis") as server:
        async with make_client(make_settings(redis_url=server.url)) as client:
            sent = await post_everything(client)
            if how == "sigterm":
                server.terminate()
            else:
                server.shutdown_command()
            down = await client.post("/events", json=event("r0", 999))
            assert down.status_code == 503
            server.start()
            for user in USERS:
                session = (await client.get(f"/users/{user}/session")).json()
                assert [e["event_id"] for e in session["events"]] == sent[user]
            # The restarted server lost its script cache: the write path reloads it.
            again = await client.post("/events", json=event("r0", 1000))
            assert again.status_code == 202
            rec = await client.get("/recommendations/r0")
            assert rec.headers["X-Skiprec-Fallback"] == "none"


async def one_kill_trial(
    server: RedisServer, client, trial: int, rng: random.Random
) -> dict[str, float]:
    """Write until a random moment, kill -9, restart; count what is missing."""
    acked_at: dict[tuple[str, str], float] = {}
    attempted: set[tuple[str, str]] = set()
    stop = asyncio.Event()

    async def writer(user: str) -> None:
        counter = 0
        while not stop.is_set():
            batch = [event(user, counter + i) for i in range(10)]
            counter += 10
            ids = [(user, str(e["event_id"])) for e in batch]
            attempted.update(ids)
            response = await client.post("/events", json={"events": batch})
            if response.status_code != 202:
                assert response.status_code == 503
                return
            acked_at.update(dict.fromkeys(ids, time.monotonic()))

    users = [f"k{trial}-{w}" for w in range(4)]
    tasks = [asyncio.create_task(writer(user)) for user in users]
    await asyncio.sleep(rng.uniform(0.3, 1.2))
    killed_at = time.monotonic()
    server.kill()
    stop.set()
    await asyncio.gather(*tasks)
    server.start()
    redis_client = server.client()
    stored: set[tuple[str, str]] = set()
    for user in users:
        raw = redis_client.lrange(keys.session_events_key(user), 0, -1)
        stored |= {(user, item.split("|", 1)[0]) for item in raw}
    redis_client.close()
    assert stored <= attempted
    lost = set(acked_at) - stored
    return {
        "acknowledged": len(acked_at),
        "lost": len(lost),
        "stored_without_202": len(stored - set(acked_at)),
        "oldest_lost_s": max((killed_at - acked_at[e] for e in lost), default=0.0),
    }


KILL_TRIALS = 10
# What everysec may lose: the writes of the last second, two when an fsync stalls
# (https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/).
EVERYSEC_WINDOW_S = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
async def test_kill_9_loss_per_fsync_policy(
    appendfsync, make_client, make_settings, tmp_path, capsys, redis_process
):
    rng = random.Random(7)
    trials = []
    with redis_process(tmp_path / "redis", appendfsync=appendfsync) as server:
        settings = make_settings(redis_url=server.url, session_max_events=100_000)
        async with make_client(settings) as client:
            for trial in range(KILL_TRIALS):
                trials.append(await one_kill_trial(server, client, trial, rng))
    acknowledged = sum(t["acknowledged"] for t in trials)
    lost = sum(t["lost"] for t in trials)
    with capsys.disabled():
        print(
            f"\nkill -9, appendfsync {appendfsync}: {KILL_TRIALS} trials, "
            f"{acknowledged} acknowledged events, {lost} lost, "
            f"{sum(t['stored_without_202'] for t in trials)} stored without a 202 "
            f"(503 to the client), oldest lost acknowledged "
            f"{max(t['oldest_lost_s'] for t in trials):.2f} s before the kill"
        )
    assert acknowledged > 0
    if appendfsync == "always":
        assert lost == 0
    else:
        assert all(t["oldest_lost_s"] <= EVERYSEC_WINDOW_S for t in trials)
