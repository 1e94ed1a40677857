"""The session store on a real Redis: append, dedup, stream, and the Lua twins.

``lua/read_session.lua`` cuts the current session and parses stored events; the
tests here run the same cases through it and through ``skiprec.sessions`` /
``skiprec.events``, so the two copies cannot drift apart.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import keys
from service.errors import SessionStoreUnavailable
from service.session_store import (
    APPEND_SCRIPT,
    READ_SCRIPT,
    SessionStore,
    StoreConfig,
)
from skiprec.events import FIELD_SEPARATOR, STORED_SKIP, StoredEvent, parse_code
from skiprec.sessions import current_session_start


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
        StoredEvent(f"e{i}", "u", f"t{i}", bool(i % 2), 1000.0 + i) for i in range(7)
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
    await store.append([StoredEvent("old", "u", "t1", False, 1.0)], now=1000.0)
    await store.append([StoredEvent("new", "u", "t2", False, 2.0)], now=1100.0)
    members = await store.client.zrange(keys.dedup_key("u"), 0, -1)
    assert members == ["new"]
    await store.client.aclose()


async def test_script_is_reloaded_after_the_server_forgets_it(redis_url):
    store = store_for(redis_url)
    await store.register()
    await store.client.script_flush()
    result = await store.append([StoredEvent("a", "u", "t1", False, 1.0)], now=2.0)
    assert result.accepted == 1
    await store.client.aclose()


async def test_stream_export_yields_each_event_id_once(redis_url):
    store = store_for(redis_url)
    batch = [
        StoredEvent("a", "u", "t1", False, 1.0),
        StoredEvent("", "u", "t2", True, 2.0),
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
        StoredEvent(f"e{i}", "u", track, kind == "skip", ts)
        for i, (track, kind, ts) in enumerate(specs)
    ]


def expected_window(session: list[StoredEvent], window: int):
    """What read_window must return, computed from ``skiprec`` alone."""
    newest = session[len(session) - min(window, len(session)) :]
    older = session[: len(session) - len(newest)]
    return (
        tuple(e.track_id for e in newest),
        tuple(e.skipped for e in newest),
        tuple(e.level for e in newest),
        {(e.track_id, e.code) for e in older},  # distinct by stored code
    )


async def check_window_against_python(store, events, now, window):
    await store.reset("u")
    await store.append(events, now=now)
    got = await store.read_window("u", now, window)
    stored = await store.read_events("u")
    start = current_session_start([e.timestamp for e in stored], 100.0, now)
    tracks, skipped, levels, earlier = expected_window(stored[start:], window)
    assert got.track_ids == tracks
    assert got.skipped == skipped
    assert got.levels == levels
    assert set(got.earlier) == {(t, parse_code(code)[0]) for t, code in earlier}
    assert len(got.earlier) == len(earlier)  # each distinct (track, code) once


@pytest.mark.parametrize(("now", "window"), [(400.0, 2), (400.0, 50), (2000.0, 5)])
async def test_window_is_the_current_session_cut_in_redis(redis_url, now, window):
    store = store_for(redis_url, session_gap_s=100.0, session_max_events=50)
    # A gap (150 -> 300) ends an earlier session; then b skipped twice, a, x, c, d.
    events = session_of(
        ("old", "skip", 100.0),
        ("old2", "play", 150.0),
        ("b", "skip", 300.0),
        ("a", "play", 301.0),
        ("b", "skip", 302.5),
        ("b", "play", 302.75),
        ("x", "play", 303.0),
        ("c", "skip", 310.25),
        ("d", "play", 320.0),
    )
    await check_window_against_python(store, events, now, window)
    await store.client.aclose()


stamps = st.floats(min_value=0.0, max_value=1_000.0, allow_nan=False).map(
    lambda t: round(t, 3)  # stored with 3 decimals
)


@settings(
    max_examples=60,
    deadline=None,
    # Each example resets the user's keys, so a shared server fixture is safe.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from("abcd"), st.sampled_from("ps0123"), stamps),
        max_size=12,
    ),
    now_offset=st.floats(min_value=-50.0, max_value=200.0, allow_nan=False),
    window=st.integers(min_value=1, max_value=6),
)
async def test_lua_and_python_cut_and_parse_the_same_sessions(
    redis_url, specs, now_offset, window
):
    """Random logs (clocks going back, graded and binary events) through both
    copies of the rules."""
    store = store_for(redis_url, session_gap_s=100.0, session_max_events=50)
    events = [
        StoredEvent(
            f"id-{i}", "u", track, *parse_code(code)[:1], ts, parse_code(code)[1]
        )
        for i, (track, code, ts) in enumerate(specs)
    ]
    now = (specs[-1][2] if specs else 0.0) + now_offset
    await check_window_against_python(store, events, now, window)
    await store.client.aclose()


def test_the_lua_script_spells_the_stored_event_as_skiprec_does():
    event = StoredEvent("e-1:x@y", "user.1", "track_9", True, 1700000000.125)
    assert event.encode() == "e-1:x@y|track_9|s|1700000000.125"
    # The patterns the scripts match stored events with (their only parsing).
    assert '"^([^|]*)|([^|]*)|(%w)|(.*)$"' in READ_SCRIPT
    # The append script counts a skip by code "s" or skip level 0/1.
    assert '"^[^|]*|[^|]*|[s01]|"' in APPEND_SCRIPT
    assert STORED_SKIP == "s" and FIELD_SEPARATOR == "|"
    assert [code for code in "ps0123" if parse_code(code)[0]] == ["s", "0", "1"]


async def test_graded_skips_are_counted_and_read_back(redis_url):
    store = store_for(redis_url)
    events = [
        StoredEvent("a", "u", "t1", True, 1.0, 0),
        StoredEvent("b", "u", "t2", False, 2.0, 2),
        StoredEvent("c", "u", "t3", True, 3.0),
    ]
    result = await store.append(events, now=4.0)
    assert (result.accepted, result.accepted_skips) == (3, 2)
    assert await store.read_events("u") == events
    assert [e async for e in store.iter_stream()] == events
    window = await store.read_window("u", 4.0, 2)
    assert window.levels == (2, None) and window.earlier == (("t1", True),)
    await store.client.aclose()


async def test_model_input_of_a_finished_or_missing_session_is_empty(redis_url):
    store = store_for(redis_url, session_gap_s=100.0)
    assert (await store.read_window("nobody", 10.0, 5)).track_ids == ()
    await store.append(session_of(("a", "play", 1.0)), now=1.0)
    assert (await store.read_window("u", 101.0, 5)).track_ids == ("a",)
    assert (await store.read_window("u", 101.5, 5)).track_ids == ()
    await store.client.aclose()


async def test_one_request_is_one_script_call_and_one_stream_entry(
    redis_url, sync_redis
):
    store = store_for(redis_url)
    batch = [
        StoredEvent(f"e{i}", f"user{i % 3}", f"t{i}", bool(i % 2), i) for i in range(9)
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
    await store.append([StoredEvent("b", "u", "t2", False, 6.0)], now=7.0)
    assert [e async for e in store.iter_stream()] == [
        StoredEvent("a", "u", "t1", True, 5.0),
        StoredEvent("b", "u", "t2", False, 6.0),
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
            await store.read_window("u", 1.0, 5)
        assert time.monotonic() - started < 0.5
        await store.client.aclose()


async def test_a_redis_out_of_memory_is_unavailable_not_an_error(redis_url, sync_redis):
    """OOM (maxmemory reached, noeviction) arrives through a pipeline whose message
    redis-py rewrites: the store maps it by class to SessionStoreUnavailable."""
    store = store_for(redis_url)
    await store.register()
    before = sync_redis.config_get("maxmemory*")
    try:
        sync_redis.config_set("maxmemory-policy", "noeviction")
        sync_redis.config_set("maxmemory", 1)  # below what Redis already uses
        with pytest.raises(SessionStoreUnavailable, match="OutOfMemoryError") as caught:
            await store.append([StoredEvent("m", "u", "t1", False, 1.0)], now=1.0)
        assert caught.value.__cause__ is not None
    finally:
        sync_redis.config_set("maxmemory", before["maxmemory"])
        sync_redis.config_set("maxmemory-policy", before["maxmemory-policy"])
    await store.client.aclose()
