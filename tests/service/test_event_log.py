"""The live event log's reader: dedup window, trimmed counts, cursors (real Redis)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service import keys
from service.event_log import (
    LOG_SCRIPT,
    START,
    DedupWindow,
    LogPosition,
    LogRead,
    commit_cursor,
    load_cursor,
)
from skiprec.events import StoredEvent


@pytest.fixture
async def reader_client(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def event(event_id: str, user: str = "u", track: str = "t1") -> StoredEvent:
    return StoredEvent(event_id, user, track, False, 1.0)


def log(sync_redis, events, maxlen=1_000_000):
    """Append through the service's own log script; the last sequence number."""
    lines = [e.stream_line() for e in events]
    return int(
        sync_redis.eval(
            LOG_SCRIPT, 2, keys.STREAM_KEY, keys.LOG_SEQ_KEY, maxlen, *lines
        )
    )


def log_at(sync_redis, ms, seq, item):
    """One entry received at ``ms`` (an explicit stream id), as the script writes."""
    fields = {"e": item.stream_line(), "q": seq}
    sync_redis.xadd(keys.STREAM_KEY, fields, id=f"{ms}-0")


async def read_all(read: LogRead) -> list[str]:
    return [e.event_id async for e in read]


def test_dedup_window_drops_repeats_within_the_window_of_the_first():
    window = DedupWindow(60.0)
    assert not window.is_repeat("u", "a", 1_000)
    assert window.is_repeat("u", "a", 61_000)  # exactly one window later: a repeat
    assert not window.is_repeat("v", "a", 61_000)  # ids are per user
    assert not window.is_repeat("u", "a", 61_001)  # the repeat did not refresh it


def test_dedup_window_forgets_old_ids_so_memory_stays_bounded():
    window = DedupWindow(1.0)
    for ms in range(100_000):  # one new id per millisecond for 100 s
        assert not window.is_repeat("u", f"e{ms}", ms)
        assert len(window) <= 1_001
    assert len(window) == 1_001


async def test_a_read_uses_entry_times_as_receive_times(sync_redis, reader_client):
    # a at 1 s; its retries at 30 s (dropped), 62 s (61 s after the first: a new
    # occurrence, kept) and 100 s (38 s after that one: dropped).
    for seq, ms in enumerate((1_000, 30_000, 62_000, 100_000), start=1):
        log_at(sync_redis, ms, seq, event("a"))
    log_at(sync_redis, 100_001, 5, event("b"))
    read = LogRead(reader_client, START, dedup_window_s=60.0)
    assert await read_all(read) == ["a", "a", "b"]
    stats = read.stats
    assert (stats.entries, stats.events, stats.duplicates, stats.trimmed) == (
        5,
        3,
        2,
        0,
    )
    assert stats.position == LogPosition("100001-0", 5)


async def test_trimmed_events_are_counted_from_sequence_numbers(
    sync_redis, reader_client
):
    # MAXLEN ~ 100 trims whole stream nodes: some of the first 1000 are gone.
    for start in range(0, 1_000, 50):
        log(sync_redis, [event(f"e{i}") for i in range(start, start + 50)], maxlen=100)
    first = LogRead(reader_client)
    events = await read_all(first)
    assert first.stats.trimmed > 0
    assert first.stats.trimmed + len(events) == 1_000  # every event read or counted
    assert events[0] == f"e{first.stats.trimmed}"
    # Resumed after its position: only the gap since then counts.
    for start in range(1_000, 2_000, 50):
        log(sync_redis, [event(f"e{i}") for i in range(start, start + 50)], maxlen=100)
    resumed = LogRead(reader_client, first.stats.position)
    later = await read_all(resumed)
    assert resumed.stats.trimmed > 0
    assert resumed.stats.trimmed + len(later) == 1_000
    assert resumed.stats.position.seq == 2_000
    print(
        f"trimmed first read {first.stats.trimmed}/1000, "
        f"resumed {resumed.stats.trimmed}/1000"
    )


async def test_a_resumed_read_remembers_the_window_before_its_cursor(
    sync_redis, reader_client
):
    log(sync_redis, [event("a"), event("b")])
    first = LogRead(reader_client)
    assert await read_all(first) == ["a", "b"]
    log(sync_redis, [event("a"), event("c")])  # a retry of a, then a new event
    resumed = LogRead(reader_client, first.stats.position)
    assert await read_all(resumed) == ["c"]
    assert (resumed.stats.duplicates, resumed.stats.trimmed) == (1, 0)


async def test_a_read_stops_at_the_newest_entry_when_it_began(
    sync_redis, reader_client
):
    log(sync_redis, [event(f"e{i}") for i in range(5)])
    read = LogRead(reader_client, batch=2)
    seen = []
    async for item in read:
        seen.append(item.event_id)
        if len(seen) == 1:
            log(sync_redis, [event("late")])  # arrives during the read
    assert seen == [f"e{i}" for i in range(5)]
    assert read.stats.position.seq == 5
    assert await read_all(LogRead(reader_client, read.stats.position)) == ["late"]


async def test_entries_of_earlier_releases_carry_no_sequence_and_no_gap(
    sync_redis, reader_client
):
    sync_redis.xadd(keys.STREAM_KEY, {"events": "a|u|t1|p|1.000\nb|u|t2|s|2.000"})
    log(sync_redis, [event("c")])
    read = LogRead(reader_client)
    assert await read_all(read) == ["a", "b", "c"]
    assert (read.stats.trimmed, read.stats.position.seq) == (0, 1)


async def test_a_recreated_log_counts_as_a_reset(sync_redis, reader_client):
    log(sync_redis, [event("a"), event("b"), event("c")])
    first = LogRead(reader_client)
    await read_all(first)
    sync_redis.delete(keys.STREAM_KEY, keys.LOG_SEQ_KEY)
    log(sync_redis, [event("d"), event("e")])
    resumed = LogRead(reader_client, first.stats.position)
    assert await read_all(resumed) == ["d", "e"]
    assert (resumed.stats.resets, resumed.stats.trimmed) == (1, 0)


async def test_a_cursor_commits_only_from_the_position_it_was_read_at(
    reader_client,
):
    assert await load_cursor(reader_client, "nightly") is None
    here = LogPosition("5-0", 3)
    assert await commit_cursor(reader_client, "nightly", None, here)
    assert await load_cursor(reader_client, "nightly") == here
    # A second export that also began before any commit must not overwrite it.
    assert not await commit_cursor(
        reader_client, "nightly", None, LogPosition("9-0", 7)
    )
    assert await commit_cursor(reader_client, "nightly", here, LogPosition("9-0", 7))
    assert await load_cursor(reader_client, "nightly") == LogPosition("9-0", 7)
    assert await load_cursor(reader_client, "other") is None  # one cursor per name
