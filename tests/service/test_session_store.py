"""Session store pieces that need no HTTP: gap logic, event codec, Lua invariants."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service import keys
from service.errors import SessionStoreUnavailable
from service.session_store import (
    SessionStore,
    StoreConfig,
    StoredEvent,
    current_session,
)


def at(timestamp: float, track_id: str = "t") -> StoredEvent:
    return StoredEvent("", "u", track_id, "play", timestamp)


def test_current_session_starts_after_the_last_gap():
    events = [at(0, "a"), at(10, "b"), at(200, "c"), at(250, "d")]
    assert [e.track_id for e in current_session(events, 100, now=260)] == ["c", "d"]
    # A gap of exactly gap_s does not split (strictly greater does).
    assert len(current_session([at(0), at(100)], 100, now=100)) == 2


def test_current_session_is_empty_once_the_listener_left():
    assert current_session([at(0), at(10)], 100, now=111) == []
    assert current_session([], 100, now=0) == []


def test_current_session_keeps_acceptance_order_when_clocks_go_back():
    # Gaps are measured between consecutive accepted events; going back is no gap.
    events = [at(100, "a"), at(50, "b"), at(90, "c")]
    assert [e.track_id for e in current_session(events, 60, now=130)] == ["a", "b", "c"]


def test_event_codec_round_trips():
    event = StoredEvent("e-1:x@y", "user.1", "track_9", "skip", 1700000000.125)
    assert StoredEvent.decode("user.1", event.encode()) == event


def store_for(url: str, **overrides: float) -> SessionStore:
    config = {
        "session_gap_s": 1800.0,
        "session_max_events": 5,
        "session_ttl_s": 100,
        "dedup_ttl_s": 50,
        "stream_maxlen": 1000,
    }
    config.update(overrides)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    return SessionStore(client, StoreConfig(**config))  # type: ignore[arg-type]


async def test_append_dedups_trims_and_counts_skips(redis_url):
    store = store_for(redis_url)
    events = [
        StoredEvent(f"e{i}", "u", f"t{i}", "skip" if i % 2 else "play", 1000.0 + i)
        for i in range(7)
    ]
    result = await store.append(events, now=1010.0)
    assert (result.accepted, result.duplicates, result.accepted_skips) == (7, 0, 3)
    again = await store.append(events[:2], now=1011.0)
    assert (again.accepted, again.duplicates) == (0, 2)
    stored = await store.read_events("u")
    assert [e.track_id for e in stored] == ["t2", "t3", "t4", "t5", "t6"]
    await store.client.aclose()


async def test_dedup_entries_expire_after_the_dedup_ttl(redis_url):
    store = store_for(redis_url, dedup_ttl_s=50)
    await store.append([StoredEvent("old", "u", "t1", "play", 1.0)], now=1000.0)
    await store.append([StoredEvent("new", "u", "t2", "play", 2.0)], now=1100.0)
    members = await store.client.zrange(keys.dedup_key("u"), 0, -1)
    assert members == ["new"]
    await store.client.aclose()


async def test_script_is_reloaded_after_the_server_forgets_it(redis_url):
    store = store_for(redis_url)
    await store.register()
    await store.client.script_flush()
    result = await store.append([StoredEvent("a", "u", "t1", "play", 1.0)], now=2.0)
    assert result.accepted == 1
    await store.client.aclose()


async def test_stream_export_yields_each_event_id_once(redis_url):
    store = store_for(redis_url)
    batch = [
        StoredEvent("a", "u", "t1", "play", 1.0),
        StoredEvent("", "u", "t2", "skip", 2.0),
    ]
    await store.append(batch, now=3.0)
    await store.append(batch[:1], now=4.0)  # a retry: duplicate in the stream
    exported = [event async for event in store.iter_stream(batch=1)]
    assert exported == batch
    await store.client.aclose()


async def test_unreachable_redis_maps_to_session_store_unavailable():
    from tests.service.conftest import free_port

    store = store_for(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(SessionStoreUnavailable) as caught:
        await store.read_events("u")
    assert caught.value.__cause__ is not None
    await store.client.aclose()


def session_of(*specs: tuple[str, str, float]) -> list[StoredEvent]:
    return [
        StoredEvent(f"e{i}", "u", track, kind, ts)
        for i, (track, kind, ts) in enumerate(specs)
    ]


@pytest.mark.parametrize(
    ("now", "window", "exclude_played"),
    [(400.0, 2, False), (400.0, 2, True), (400.0, 50, False), (2000.0, 5, False)],
)
async def test_model_input_is_the_current_session_cut_in_redis(
    redis_url, now, window, exclude_played
):
    store = store_for(redis_url, session_gap_s=100.0, session_max_events=50)
    # A gap (150 -> 300) ends an earlier session; then a, b skipped twice, c, d.
    events = session_of(
        ("old", "skip", 100.0),
        ("old2", "play", 150.0),
        ("b", "skip", 300.0),
        ("a", "play", 301.0),
        ("b", "skip", 302.5),
        ("x", "play", 303.0),
        ("c", "skip", 310.25),
        ("d", "play", 320.0),
    )
    await store.append(events, now=320.0)
    got = await store.read_model_input("u", now, window, exclude_played)
    session = await store.read_session("u", now)
    assert got.track_ids == tuple(e.track_id for e in session[-window:])
    assert got.skipped == tuple(e.event_type == "skip" for e in session[-window:])
    older = session[: max(0, len(session) - window)]
    expected = {e.track_id for e in older if e.event_type == "skip" or exclude_played}
    assert sorted(got.excluded) == sorted(expected)
    assert len(got.excluded) == len(set(got.excluded))
    await store.client.aclose()


async def test_model_input_of_a_finished_or_missing_session_is_empty(redis_url):
    store = store_for(redis_url, session_gap_s=100.0)
    assert (await store.read_model_input("nobody", 10.0, 5, False)).track_ids == ()
    await store.append(session_of(("a", "play", 1.0)), now=1.0)
    assert (await store.read_model_input("u", 101.0, 5, False)).track_ids == ("a",)
    assert (await store.read_model_input("u", 101.5, 5, False)).track_ids == ()
    await store.client.aclose()


async def test_one_request_is_one_script_call_and_one_stream_entry(
    redis_url, sync_redis
):
    store = store_for(redis_url)
    batch = [
        StoredEvent(f"e{i}", f"user{i % 3}", f"t{i}", "skip" if i % 2 else "play", i)
        for i in range(9)
    ]
    result = await store.append(batch, now=10.0)
    assert (result.accepted, result.duplicates, result.accepted_skips) == (9, 0, 4)
    assert sync_redis.xlen(keys.STREAM_KEY) == 1
    for user in ("user0", "user1", "user2"):
        events = await store.read_events(user)
        assert events == [e for e in batch if e.user_id == user]
    retry = await store.append(batch[:4], now=11.0)
    assert (retry.accepted, retry.duplicates) == (0, 4)
    assert [e async for e in store.iter_stream()] == batch
    await store.client.aclose()


async def test_stream_entries_written_one_event_each_still_export(
    redis_url, sync_redis
):
    store = store_for(redis_url)
    fields = {"id": "a", "u": "u", "t": "t1", "e": "skip", "ts": "5.000"}
    sync_redis.xadd(keys.STREAM_KEY, fields)  # the format before batched entries
    await store.append([StoredEvent("b", "u", "t2", "play", 6.0)], now=7.0)
    assert [e async for e in store.iter_stream()] == [
        StoredEvent("a", "u", "t1", "skip", 5.0),
        StoredEvent("b", "u", "t2", "play", 6.0),
    ]
    await store.client.aclose()


async def test_a_read_past_its_deadline_is_unavailable(redis_url):
    import socket
    import time

    # A server that accepts connections and never answers (a frozen Redis).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        store = store_for(f"redis://127.0.0.1:{port}/0", read_timeout_s=0.05)
        started = time.monotonic()
        with pytest.raises(SessionStoreUnavailable):
            await store.read_model_input("u", 1.0, 5, False)
        assert time.monotonic() - started < 0.5
        await store.client.aclose()
