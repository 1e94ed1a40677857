"""Property tests: the session encoder, and the append script against a real Redis.

- ``skiprec.encoding.encode_sessions``: shapes, left truncation to the newest events,
  left padding, the appended mask, and independence from batch mates and padding width.
- ``service/lua/append_events.lua`` is run (EVAL, on the suite's real redis-server) on
  generated batches and compared after every call with a model of its contract: dedup
  by event id (ids kept while younger than the dedup TTL, "" never deduplicated),
  append in argument order, keep the newest ``max_events``, TTL on every key, counts.
"""

from __future__ import annotations

import bisect

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import keys
from service.session_store import APPEND_SCRIPT, LATE_MARK
from skiprec.encoding import FEEDBACK_MASK, FEEDBACK_PAD, EncodingSpec, encode_sessions
from skiprec.vocab import MASK_ID, PAD_ID

pytestmark = pytest.mark.reliability

events = st.tuples(st.integers(1, 500), st.sampled_from([1, 2]))  # OOV=1 allowed
sessions = st.lists(st.lists(events, max_size=30), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(sessions, st.integers(1, 12), st.booleans())
def test_encoder_keeps_the_newest_events_right_aligned(batch, max_seq_len, mask):
    spec = EncodingSpec(max_seq_len=max_seq_len, append_mask=mask)
    item_ids, feedback = encode_sessions(batch, spec)
    tails = [
        (list(s) + ([(MASK_ID, FEEDBACK_MASK)] if mask else []))[-max_seq_len:]
        for s in batch
    ]
    width = max(1, *map(len, tails))
    assert item_ids.shape == feedback.shape == (len(batch), width)
    assert item_ids.dtype == feedback.dtype == np.int64
    for row, tail in enumerate(tails):
        pad = width - len(tail)
        assert (item_ids[row, :pad] == PAD_ID).all()
        assert (feedback[row, :pad] == FEEDBACK_PAD).all()
        assert [
            (int(i), int(f))
            for i, f in zip(item_ids[row, pad:], feedback[row, pad:], strict=True)
        ] == tail


@settings(max_examples=200, deadline=None)
@given(sessions, st.integers(1, 12), st.booleans(), st.data())
def test_encoder_rows_do_not_depend_on_batch_mates_or_padding(
    batch, max_seq_len, mask, data
):
    spec = EncodingSpec(max_seq_len=max_seq_len, append_mask=mask)
    together, together_fb = encode_sessions(batch, spec, seq_len=max_seq_len)
    for row, session in enumerate(batch):
        alone, alone_fb = encode_sessions([session], spec)
        width = alone.shape[1]
        # Wider padding only adds PAD on the left; the right-aligned part is the same.
        assert (together[row, max_seq_len - width :] == alone[0]).all()
        assert (together_fb[row, max_seq_len - width :] == alone_fb[0]).all()
        assert (together[row, : max_seq_len - width] == PAD_ID).all()
    width = data.draw(st.integers(1, max_seq_len))
    narrow, _ = encode_sessions(batch, spec, seq_len=width)
    assert (narrow == together[:, max_seq_len - width :]).all()


# --- the append script --------------------------------------------------------------

SESSION_TTL = 3_000
DEDUP_TTL = 1_000  # in the script's "now" units; real expiry never fires in a test
SERVED_TTL = 1_800

event_ids = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
script_batch = st.lists(
    st.tuples(
        event_ids,
        st.sampled_from(["p", "s", "0", "3"]),
        st.integers(0, 9),
        st.integers(0, 50),  # event time: arrival order is not time order
        st.sampled_from([False, False, False, True]),  # too late for the session
    ),
    min_size=1,
    max_size=6,
)
# A step of 0 repeats the receive time: a resent call, not a client retry.
script_calls = st.lists(
    st.tuples(script_batch, st.integers(0, 600)), min_size=1, max_size=12
)


def stamp(encoded: str) -> float:
    return float(encoded.rsplit("|", 1)[1])


class ScriptModel:
    """What the script promises, in plain Python."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.events: list[str] = []
        self.dedup: dict[str, float] = {}

    def append(
        self, batch: list[tuple[str, str, bool]], now: float
    ) -> tuple[int, int, int, int]:
        accepted = duplicates = skips = late_count = 0
        in_call: set[str] = set()
        for event_id, encoded, late in batch:
            fresh = event_id not in self.dedup
            resent = not fresh and event_id not in in_call
            resent = resent and self.dedup[event_id] == now
            in_call.add(event_id)
            if not (fresh or resent):
                duplicates += 1
                continue
            if fresh:
                self.dedup[event_id] = now
                if not late:
                    # after every event at or before its time (ties: arrival order)
                    times = [stamp(e) for e in self.events]
                    position = bisect.bisect_right(times, stamp(encoded))
                    self.events.insert(position, encoded)
            accepted += 1
            late_count += late
            skips += encoded.split("|")[2] in ("s", "0", "1")
        self.events = self.events[-self.max_events :]
        horizon = now - DEDUP_TTL
        self.dedup = {k: t for k, t in self.dedup.items() if t >= horizon}
        return accepted, duplicates, skips, late_count


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(script_calls, st.integers(1, 6))
def test_append_script_matches_its_model(redis_server, calls, max_events):
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    script_keys = (
        keys.session_events_key("prop"),
        keys.dedup_key("prop"),
        keys.served_key("prop"),
    )
    events_key, dedup_key, _ = script_keys
    model = ScriptModel(max_events)
    now = 1_000_000.0
    try:
        for batch, step in calls:
            now += step
            sent: list[tuple[str, str, bool]] = []
            args: list[str | int] = [
                max_events,
                SESSION_TTL,
                DEDUP_TTL,
                repr(now),
                SERVED_TTL,
                keys.dedup_score(now),
                keys.dedup_score(now - DEDUP_TTL),
            ]
            for event_id, code, track, when, late in batch:
                encoded = f"{event_id}|t{track}|{code}|{when}.000"
                sent.append((event_id, encoded, late))
                args += (event_id, LATE_MARK + encoded if late else encoded, "")
            # no served lists here: test_outcomes covers the attribution part
            reply = client.eval(APPEND_SCRIPT, 3, *script_keys, *args)
            assert tuple(reply) == model.append(sent, now)
            assert client.lrange(events_key, 0, -1) == model.events
            assert sorted(client.zrange(dedup_key, 0, -1)) == sorted(model.dedup)
            if model.events:
                assert 0 < client.ttl(events_key) <= SESSION_TTL
            if model.dedup:
                assert 0 < client.ttl(dedup_key) <= DEDUP_TTL
            assert client.ttl(events_key) != -1 and client.ttl(dedup_key) != -1
    finally:
        client.close()
