"""The session store on a real Redis: append, dedup, stream, and the Lua twins.

``lua/read_session.lua`` cuts the current session and parses stored events; the
tests here run the same cases through it and through ``skiprec.sessions`` /
``skiprec.events``, so the two copies cannot drift apart.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import keys
from service.errors import SessionStoreUnavailable
from service.event_log import iter_log
from service.session_store import (
    APPEND_SCRIPT,
    READ_SCRIPT,
    SessionStore,
    SessionWindow,
    StoreConfig,
)
from skiprec.events import FIELD_SEPARATOR, STORED_SKIP, StoredEvent, parse_code
from skiprec.sessions import current_session_start, time_order


def store_for(url: str, **overrides: float | bool) -> SessionStore:
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


async def test_dedup_scores_are_integer_microseconds(redis_url):
    store = store_for(redis_url)
    now = 1764763000.123456
    await store.append([StoredEvent("a", "u", "t1", False, now)], now=now)
    # an integer score is what keeps a small set's inserts cheap (append_events.lua)
    scored = await store.client.zrange(keys.dedup_key("u"), 0, -1, withscores=True)
    assert scored == [("a", 1764763000123456.0)]
    assert keys.dedup_score(now) == 1764763000123456
    await store.client.aclose()


async def test_dedup_entries_in_seconds_from_before_still_dedup_and_expire(redis_url):
    # A set written before scores were microseconds, whose entries are seconds.
    store = store_for(redis_url, dedup_ttl_s=50)
    now = 1764763000.0
    await store.client.zadd(keys.dedup_key("u"), {"stale": now - 60, "kept": now - 10})
    result = await store.append(
        [
            StoredEvent("kept", "u", "t1", False, now - 10),
            StoredEvent("stale", "u", "t2", False, now - 60),
            StoredEvent("new", "u", "t3", False, now),
        ],
        now=now,
    )
    # "stale" was met before it was pruned at the call's end: still a duplicate
    assert (result.accepted, result.duplicates) == (1, 2)
    members = await store.client.zrange(keys.dedup_key("u"), 0, -1)
    assert members == ["kept", "new"]
    again = await store.append(
        [StoredEvent("kept", "u", "t1", False, now - 10)], now=now + 20
    )
    assert (again.accepted, again.duplicates) == (0, 1)
    await store.append([StoredEvent("later", "u", "t4", False, now)], now=now + 45)
    members = await store.client.zrange(keys.dedup_key("u"), 0, -1)
    assert members == ["new", "later"]  # "kept" is 55 s old, past the 50 s TTL
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
        StoredEvent("b", "u", "t2", True, 2.0),
    ]
    await store.append(batch, now=3.0)
    await store.append(batch[:1], now=4.0)  # a retry: duplicate in the stream
    exported = [event async for event in iter_log(store.client, batch=1)]
    assert exported == batch
    await store.client.aclose()


async def test_an_event_without_an_id_is_refused_by_the_store(redis_url):
    store = store_for(redis_url)
    with pytest.raises(ValueError, match="needs an id"):
        await store.append([StoredEvent("", "u", "t1", False, 1.0)], now=2.0)
    await store.client.aclose()


async def test_a_late_event_is_inserted_in_time_order(redis_url):
    store = store_for(redis_url, session_max_events=3)
    first = [
        StoredEvent("a", "u", "t1", False, 10.0),
        StoredEvent("b", "u", "t2", False, 20.0),
    ]
    await store.append(first, now=21.0)
    await store.append([StoredEvent("c", "u", "t3", True, 15.0)], now=22.0)
    assert [e.event_id for e in await store.read_events("u")] == ["a", "c", "b"]
    # Older than everything kept in a full list: in the log, trimmed off the list.
    result = await store.append([StoredEvent("d", "u", "t4", False, 1.0)], now=23.0)
    assert result.accepted == 1
    assert [e.event_id for e in await store.read_events("u")] == ["a", "c", "b"]
    assert [e.event_id async for e in iter_log(store.client)] == ["a", "b", "c", "d"]
    await store.client.aclose()


async def test_late_marked_events_are_counted_and_logged_never_stored(redis_url):
    store = store_for(redis_url)
    events = [
        StoredEvent("a", "u", "t1", True, 1.0),
        StoredEvent("b", "u", "t2", False, 100.0),
    ]
    result = await store.append(events, now=101.0, late={0})
    assert (result.accepted, result.late, result.accepted_skips) == (2, 1, 1)
    assert await store.read_events("u") == events[1:]
    assert [e async for e in iter_log(store.client)] == events
    again = await store.append(events[:1], now=102.0, late={0})  # a client retry
    assert (again.accepted, again.duplicates, again.late) == (0, 1, 0)
    await store.client.aclose()


async def test_a_resent_call_counts_its_events_once(redis_url):
    """redis-py resends a call after a lost connection: the same ids with the same
    receive time are this call's own, accepted once and stored once."""
    store = store_for(redis_url)
    batch = [
        StoredEvent("a", "u", "t1", False, 1.0),
        StoredEvent("b", "u", "t2", True, 2.0),
    ]
    first = await store.append(batch, now=3.0)
    resent = await store.append(batch, now=3.0)
    assert (first.accepted, resent.accepted, resent.duplicates) == (2, 2, 0)
    assert resent.accepted_skips == 1
    assert await store.read_events("u") == batch
    retry = await store.append(batch, now=3.5)  # a client retry: a new receive time
    assert (retry.accepted, retry.duplicates) == (0, 2)
    await store.client.aclose()


async def test_a_repeated_id_within_one_call_is_a_duplicate(redis_url):
    store = store_for(redis_url)
    event = StoredEvent("a", "u", "t1", False, 1.0)
    result = await store.append([event, event], now=2.0)
    assert (result.accepted, result.duplicates) == (1, 1)
    assert await store.read_events("u") == [event]
    await store.client.aclose()


async def test_script_flush_never_doubles_the_log(redis_url, sync_redis):
    """NOSCRIPT: only the commands that did not run are sent again."""
    store = store_for(redis_url)
    await store.append([StoredEvent("a", "u", "t1", False, 1.0)], now=2.0)
    for flushed in range(3):
        sync_redis.script_flush()
        events = [StoredEvent(f"b{flushed}", f"user{flushed}", "t2", False, 3.0)]
        result = await store.append(events, now=4.0 + flushed)
        assert result.accepted == 1
    assert sync_redis.xlen(keys.STREAM_KEY) == 4
    seqs = [int(f["q"]) for _, f in sync_redis.xrange(keys.STREAM_KEY)]
    assert seqs == [1, 2, 3, 4]
    await store.client.aclose()


async def test_no_script_call_mixes_hash_slots(redis_server, sync_redis):
    """Behind a sharding proxy a call with keys of several slots is CROSSSLOT: a
    standalone server gets one call per slot too (MONITOR shows what was sent)."""
    from redis.crc import key_slot

    from tests.service.test_concurrency import Monitor

    store = store_for(redis_server)
    batch = [StoredEvent(f"e{i}", f"user{i}", "t", False, 1.0) for i in range(12)]
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    monitor = Monitor(port)
    await store.append(batch, now=2.0)
    commands = monitor.finish(sync_redis)
    calls = [c for c in commands if c[0].upper() == "EVALSHA"]
    # One append call per slot (it attributes too, service.outcomes); one log call.
    assert len(calls) == 1 + len(
        {key_slot(f"skiprec:{{user{i}}}:events".encode()) for i in range(12)}
    )
    for call in calls:
        call_keys = call[3 : 3 + int(call[2])]
        assert len({key_slot(key.encode()) for key in call_keys}) == 1
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
    # Arrival order is not time order here: the list is the time-ordered twin.
    in_order = [events[i] for i in time_order([e.timestamp for e in events])]
    assert await store.read_events("u") == in_order[-50:]
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
    assert [e async for e in iter_log(store.client)] == events
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


async def test_reads_of_one_turn_each_get_their_listeners_window(redis_url, sync_redis):
    # They share one round trip (service.autopipeline), even when the server has
    # forgotten the read script and every one of them falls back to EVAL.
    store = store_for(redis_url)
    users = [f"u{n}" for n in range(6)]
    for n, user in enumerate(users):
        await store.append(
            [
                StoredEvent(f"{user}-{i}", user, f"t{n}-{i}", i % 2 == 1, i)
                for i in range(n)
            ],
            now=10.0,
        )
    alone = [await store.read_window(user, 10.0, 3) for user in users]
    sync_redis.script_flush()
    together = await asyncio.gather(
        *(store.read_window(user, 10.0, 3) for user in users)
    )
    assert list(together) == alone
    assert alone[0] == SessionWindow() and alone[5].track_ids == (
        "t5-2",
        "t5-3",
        "t5-4",
    )
    await store.client.aclose()


def _state(sync_redis) -> dict[str, object]:
    """Every key's value, with the log's entries without their time-based ids."""
    state: dict[str, object] = {}
    for key in sorted(sync_redis.keys("*")):
        kind = sync_redis.type(key)
        if kind == "list":
            state[key] = sync_redis.lrange(key, 0, -1)
        elif kind == "zset":
            state[key] = sync_redis.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            state[key] = sync_redis.hgetall(key)
        elif kind == "stream":
            state[key] = [fields for _, fields in sync_redis.xrange(key)]
        else:
            state[key] = sync_redis.get(key)
    return state


async def test_one_call_across_slots_equals_one_call_per_slot(redis_server, sync_redis):
    """``cross_slot`` changes how many script calls a batch costs, never what they
    do: the same batches leave the same replies and the same keys."""
    from service.outcomes import ServedList
    from service.session_store import APPEND_USERS_PER_CALL
    from tests.service.test_concurrency import Monitor

    users = APPEND_USERS_PER_CALL + 30  # two chunks
    batches = [
        [
            StoredEvent(f"e{i}", f"user{i % users}", f"t{i % 5}", i % 3 == 0, 10.0 + i)
            for i in range(users + 20)
        ],  # 20 users with two events
        # retries, an event out of order, a late one, new users
        [
            StoredEvent("e3", "user3", "t3", True, 13.0),
            StoredEvent("x1", "user1", "t9", False, 5.0),
            StoredEvent("x2", "user7", "t8", True, 1.0),
            *(StoredEvent(f"n{i}", f"new{i}", "t1", False, 20.0) for i in range(5)),
        ],
    ]
    results = []
    states = []
    for cross_slot in (False, True):
        sync_redis.flushall()
        store = store_for(redis_server, session_max_events=200, cross_slot=cross_slot)
        for i in range(0, users, 3):  # a waiting served list for a third of them
            served = ServedList(
                f"r{i}", f"user{i}", "control", "v1", "model", 9.0, ("t0", "t1", "t2")
            )
            await store.keep_served(served)
        replies = []
        for number, batch in enumerate(batches):
            late = {2} if number == 1 else set()
            replies.append(await store.append(batch, now=200.0 + number, late=late))
        results.append(replies)
        states.append(_state(sync_redis))
        await store.client.aclose()
    assert results[0] == results[1]
    assert states[0] == states[1]
    assert sum(r.accepted for r in results[0]) == users + 20 + 5 + 2

    sync_redis.flushall()
    store = store_for(redis_server, cross_slot=True)
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    monitor = Monitor(port)
    await store.append(batches[0], now=200.0)
    calls = [c for c in monitor.finish(sync_redis) if c[0].upper() == "EVALSHA"]
    assert len(calls) == 2 + 1  # two chunks of users, one log call
    await store.client.aclose()


async def test_each_event_is_one_log_entry_with_its_sequence_number(
    redis_url, sync_redis
):
    store = store_for(redis_url)
    batch = [
        StoredEvent(f"e{i}", f"user{i % 3}", f"t{i}", bool(i % 2), i) for i in range(9)
    ]
    result = await store.append(batch, now=10.0)
    assert (result.accepted, result.duplicates, result.accepted_skips) == (9, 0, 4)
    entries = sync_redis.xrange(keys.STREAM_KEY)
    assert [int(fields["q"]) for _, fields in entries] == list(range(1, 10))
    for user in ("user0", "user1", "user2"):
        events = await store.read_events(user)
        assert events == [e for e in batch if e.user_id == user]
    retry = await store.append(batch[:4], now=11.0)
    assert (retry.accepted, retry.duplicates) == (0, 4)
    assert sync_redis.xlen(keys.STREAM_KEY) == 13  # at least once: retries logged
    assert [e async for e in iter_log(store.client)] == batch
    await store.client.aclose()


async def test_stream_entries_of_earlier_releases_still_export(redis_url, sync_redis):
    store = store_for(redis_url)
    fields = {"id": "a", "u": "u", "t": "t1", "e": "skip", "ts": "5.000"}
    sync_redis.xadd(keys.STREAM_KEY, fields)  # one event per entry, first release
    batched = "b|u|t2|p|6.000\nc|u|t3|1|6.500"
    sync_redis.xadd(keys.STREAM_KEY, {"events": batched})  # one entry per request
    await store.append([StoredEvent("d", "u", "t4", False, 7.0)], now=8.0)
    assert [e async for e in iter_log(store.client)] == [
        StoredEvent("a", "u", "t1", True, 5.0),
        StoredEvent("b", "u", "t2", False, 6.0),
        StoredEvent("c", "u", "t3", True, 6.5, 1),
        StoredEvent("d", "u", "t4", False, 7.0),
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


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    stamps_in_arrival_order=st.lists(stamps, max_size=15),
    cuts=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=15),
)
async def test_lua_keeps_the_newest_events_in_time_order_across_calls(
    redis_url, stamps_in_arrival_order, cuts
):
    """Any arrival order, in calls of any size, with trimming: the list is
    ``skiprec.sessions.time_order`` of everything sent, its newest ``max`` kept."""
    store = store_for(redis_url, session_max_events=4)
    await store.reset("u")
    events = [
        StoredEvent(f"id-{i}", "u", f"t{i}", False, ts)
        for i, ts in enumerate(stamps_in_arrival_order)
    ]
    start = 0
    for size in cuts:
        if start < len(events):
            await store.append(events[start : start + size], now=2000.0)
        start += size
    if start < len(events):
        await store.append(events[start:], now=2000.0)
    sent = events
    expected = [sent[i] for i in time_order([e.timestamp for e in sent])][-4:]
    assert await store.read_events("u") == expected
    await store.client.aclose()


def test_calls_across_slots_only_where_no_proxy_can_be(tmp_path):
    """The embedded server is one server; a URL may be a sharding proxy (off unless
    set); a Cluster refuses such calls, so asking for them there is an error."""
    from pydantic import ValidationError

    from service.settings import Settings

    def cross_slot(**values: object) -> bool | None:
        return Settings(bundle_dir=tmp_path, **values).redis_cross_slot  # type: ignore[arg-type]

    assert cross_slot() is True
    assert cross_slot(redis_url="redis://localhost:6379/0") is False
    assert cross_slot(redis_url="redis://localhost:6379/0", redis_cross_slot=True)
    assert cross_slot(redis_url="redis+cluster://localhost:7000") is False
    with pytest.raises(ValidationError, match="SKIPREC_REDIS_CROSS_SLOT"):
        cross_slot(redis_url="redis+cluster://localhost:7000", redis_cross_slot=True)
