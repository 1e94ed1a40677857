"""Live events -> `skiprec events export` -> the event loader -> a training run."""

from __future__ import annotations

import asyncio
import csv
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from benchmarks import processes
from service import events_export, keys
from service.event_log import LOG_SCRIPT
from service.events_export import ExportOptions, ReaderConflict, export_events
from service.events_export import main as events_main
from skiprec.events import EVENT_LOG_HEADER, StoredEvent


def log_events(sync_redis, event_ids, maxlen=1_000_000, user="u"):
    """Append events to the log through the service's own log script."""
    lines = [StoredEvent(i, user, "t1", False, 1.0).stream_line() for i in event_ids]
    sync_redis.eval(LOG_SCRIPT, 2, keys.STREAM_KEY, keys.LOG_SEQ_KEY, maxlen, *lines)


async def test_export_round_trips_through_the_event_loader(client, redis_url, tmp_path):
    from training.data import load_sessions

    now = time.time()
    listens = {
        "ann": [("t1", "play"), ("t2", "skip"), ("t3", "play")],
        "bob": [("t4", "skip"), ("t5", "play")],
    }
    for user, events in listens.items():
        body = {
            "events": [
                {
                    "event_id": f"{user}-{i}",
                    "user_id": user,
                    "track_id": track,
                    "type": kind,
                    "timestamp": now - 100 + i,
                }
                for i, (track, kind) in enumerate(events)
            ]
        }
        await client.post("/events", json=body)
        await client.post("/events", json=body)  # a retry must not duplicate rows
    out = tmp_path / "live.csv"
    args = ["export", "--out", str(out), "--redis-url", redis_url]
    assert await asyncio.to_thread(events_main, args) == 0  # the CLI runs its own loop
    sessions = {s.session_id: s for s in load_sessions(out, format="events")}
    assert set(sessions) == {"ann#0", "bob#0"}
    for user, events in listens.items():
        session = sessions[f"{user}#0"]
        assert list(session.track_ids) == [track for track, _ in events]
        assert list(session.skipped) == [kind == "skip" for _, kind in events]


async def test_a_model_trains_on_exported_live_events(client, redis_url, tmp_path):
    from training.cli.train import main as train_main

    now = time.time()
    events = [
        {
            "user_id": f"user{u}",
            "track_id": f"t{(u * 3 + i) % 20}",
            "type": "skip" if (u + i) % 4 == 0 else "play",
            "timestamp": now - 1000 + i,
        }
        for u in range(30)
        for i in range(8)
    ]
    for start in range(0, len(events), 100):
        await client.post("/events", json={"events": events[start : start + 100]})
    out = tmp_path / "live.csv"
    args = ["export", "--out", str(out), "--redis-url", redis_url]
    assert await asyncio.to_thread(events_main, args) == 0  # the CLI runs its own loop
    run_dir = tmp_path / "run"
    code = train_main(
        ["--data", str(out), "--out", str(run_dir), "--format", "events"]
        + ["--config", "training/configs/tiny.toml", "--epochs", "1", "--quiet"]
    )
    assert code == 0
    assert (run_dir / "checkpoint.pt").is_file()


def listens(user: str, first: int, count: int, now: float) -> dict[str, Any]:
    return {
        "events": [
            {
                "event_id": f"{user}-{i}",
                "user_id": user,
                "track_id": f"t{i % 20}",
                "type": "skip" if i % 3 == 0 else "play",
                "timestamp": now - 500 + i,
            }
            for i in range(first, first + count)
        ]
    }


def exported(path: Path) -> list[tuple[str, str]]:
    """(user_id, track_id) of every row, header checked."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == EVENT_LOG_HEADER
    return [(row[0], row[1]) for row in rows[1:]]


def export(out: Path, *extra: str) -> int:
    return events_main(["export", "--out", str(out), *extra])


async def test_a_resumed_export_writes_only_the_new_events(
    client, redis_url, sync_redis, tmp_path
):
    now = time.time()
    await client.post("/events", json=listens("ann", 0, 5, now))
    first = tmp_path / "1.csv"
    assert await asyncio.to_thread(export, first, "--redis-url", redis_url) == 0
    assert len(exported(first)) == 5
    await client.post("/events", json=listens("ann", 3, 5, now))  # 3, 4 are retries
    second = tmp_path / "2.csv"
    assert await asyncio.to_thread(export, second, "--redis-url", redis_url) == 0
    assert exported(second) == [("ann", f"t{i}") for i in (5, 6, 7)]
    empty = tmp_path / "3.csv"
    assert await asyncio.to_thread(export, empty, "--redis-url", redis_url) == 0
    assert exported(empty) == []  # nothing new: a header-only file
    # Another reader, and --from-start, each see everything once.
    for name, flags in (("other", ["--reader", "other"]), ("all", ["--from-start"])):
        out = tmp_path / f"{name}.csv"
        args = ["--redis-url", redis_url, *flags]
        assert await asyncio.to_thread(export, out, *args) == 0
        assert exported(out) == [("ann", f"t{i}") for i in range(8)]
    cursor = sync_redis.hgetall(keys.log_cursor_key("export"))
    assert cursor["q"] == "10"  # 10 entries, 8 distinct events


def test_an_existing_out_file_is_refused_and_the_cursor_stays(
    redis_url, sync_redis, tmp_path, caplog
):
    log_events(sync_redis, ["a", "b"])
    out = tmp_path / "events.csv"
    out.write_text("an earlier export\n")
    assert export(out, "--redis-url", redis_url) == 1
    assert "exists" in caplog.text
    assert out.read_text() == "an earlier export\n"
    assert not sync_redis.exists(keys.log_cursor_key("export"))


def test_a_window_shorter_than_a_retry_keeps_the_retry(redis_url, sync_redis, tmp_path):
    now_ms = int(time.time() * 1000)
    for seq, ms in enumerate((now_ms - 10_000, now_ms), start=1):
        line = StoredEvent("a", "u", "t1", False, 1.0).stream_line()
        sync_redis.xadd(keys.STREAM_KEY, {"e": line, "q": seq}, id=f"{ms}-0")
    day = tmp_path / "day.csv"
    assert export(day, "--redis-url", redis_url, "--reader", "day") == 0
    assert len(exported(day)) == 1  # the default: the service's 24 h window
    short = tmp_path / "short.csv"
    args = ["--redis-url", redis_url, "--reader", "short", "--dedup-window-s", "5"]
    assert export(short, *args) == 0
    assert len(exported(short)) == 2


def test_trimmed_events_are_warned_about_and_summed_up(
    redis_url, sync_redis, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    for start in range(0, 1_000, 50):
        log_events(sync_redis, [f"e{i}" for i in range(start, start + 50)], maxlen=100)
    out = tmp_path / "events.csv"
    assert export(out, "--redis-url", redis_url) == 0  # a warning, not a failure
    rows = len(exported(out))
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert f"{1_000 - rows} events were trimmed" in warning[0].getMessage()
    assert f"{1_000 - rows} trimmed before read" in caplog.records[-1].getMessage()
    print(f"exported {rows}, trimmed {1_000 - rows} of 1000")


async def test_a_failed_read_writes_nothing_and_commits_nothing(
    redis_url, sync_redis, tmp_path, monkeypatch
):
    log_events(sync_redis, [f"e{i}" for i in range(30)])
    calls = 0
    xrange = aioredis.Redis.xrange

    async def failing_xrange(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:  # after 10 rows were written
            raise RedisConnectionError("connection lost mid-export")
        return await xrange(self, *args, **kwargs)

    monkeypatch.setattr(aioredis.Redis, "xrange", failing_xrange)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(RedisConnectionError):
            await export_events(client, ExportOptions(tmp_path / "e.csv", batch=10))
    finally:
        await client.aclose()
    assert list(tmp_path.iterdir()) == []  # no file, no partial file
    assert not sync_redis.exists(keys.log_cursor_key("export"))


def test_a_failed_commit_keeps_the_file_and_the_next_export_rereads(
    redis_url, sync_redis, tmp_path, monkeypatch
):
    log_events(sync_redis, ["a", "b"])

    async def lost(*args, **kwargs):
        raise RedisConnectionError("connection lost before the commit")

    monkeypatch.setattr(events_export, "commit_cursor", lost)
    first = tmp_path / "1.csv"
    assert export(first, "--redis-url", redis_url) == 1
    monkeypatch.undo()
    log_events(sync_redis, ["c"])
    second = tmp_path / "2.csv"
    assert export(second, "--redis-url", redis_url) == 0
    assert len(exported(first)) == 2  # written and flushed before the commit
    assert len(exported(second)) == 3  # re-read, never skipped


def test_a_killed_export_leaves_the_cursor_and_no_file(redis_url, sync_redis, tmp_path):
    total = 200_000
    for start in range(0, total, 5_000):
        log_events(sync_redis, [f"e{i}" for i in range(start, start + 5_000)])
    out = tmp_path / "events.csv"
    command = [sys.executable, "-m", "skiprec_cli", "events", "export"]
    command += ["--out", str(out), "--redis-url", redis_url]
    process = subprocess.Popen(command, cwd=processes.REPO_ROOT)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.kill()  # mid-export: the partial file is being written
    process.wait()
    assert not out.exists()
    assert not sync_redis.exists(keys.log_cursor_key("export"))
    for partial in tmp_path.iterdir():
        partial.unlink()  # what a SIGKILL leaves behind (hidden, never read)
    assert export(out, "--redis-url", redis_url) == 0
    assert len(exported(out)) == total


async def test_two_exports_with_one_reader_commit_once(redis_url, sync_redis, tmp_path):
    log_events(sync_redis, [f"e{i}" for i in range(100)])
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    outs = [tmp_path / "1.csv", tmp_path / "2.csv"]
    try:
        results = await asyncio.gather(
            *(export_events(client, ExportOptions(out, batch=10)) for out in outs),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, ReaderConflict)]
    assert len(won) == len(lost) == 1 and won[0].events == 100
    assert [out.exists() for out in outs].count(True) == 1  # the loser removed its own
    assert sync_redis.hget(keys.log_cursor_key("export"), "q") == "100"


@pytest.mark.cluster
async def test_export_resumes_on_a_redis_cluster(
    redis_cluster, make_client, make_settings, tmp_path
):
    now = time.time()
    users = [f"listener-{u}" for u in range(40)]  # keys on all three masters
    first, second = tmp_path / "1.csv", tmp_path / "2.csv"
    with redis_cluster(tmp_path / "cluster") as url:
        settings = make_settings(redis_url=url, stream_maxlen=100)
        async with make_client(settings) as client:
            for user in users:
                answer = await client.post("/events", json=listens(user, 0, 25, now))
                assert answer.status_code == 202
            assert await asyncio.to_thread(export, first, "--redis-url", url) == 0
            # Retries of 20..24 (still in the log) and five new events each.
            for user in users[-2:]:
                await client.post("/events", json=listens(user, 20, 10, now))
            assert await asyncio.to_thread(export, second, "--redis-url", url) == 0
    rows = exported(first)
    trimmed = 1_000 - len(rows)
    assert trimmed > 0 and rows[-1] == ("listener-39", "t4")  # event 24
    assert sorted(exported(second)) == sorted(
        (user, f"t{i % 20}") for user in users[-2:] for i in range(25, 30)
    )
    print(f"cluster: exported {len(rows)} + 10, trimmed {trimmed} of 1000")
