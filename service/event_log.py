"""The global live event log: a bounded Redis Stream, one entry per event.

Write: ONE Lua call (``lua/log_events.lua``) per ``POST /events``, queued in the
session store's pipeline after the session scripts; it XADDs each event with its
sequence number (``MAXLEN ~`` counts events). The stream lives in one hash slot with
its counter and its readers' cursors (``service.keys``), so it works on a Cluster.

The log is *at least once*: the session scripts and the log call are separate
commands (on a Cluster the stream's slot is not the users'), so a failure between
them answers 503, the client's retry is a duplicate for the session and a second
entry in the log. Every event has an id (``service.ingest``), and readers drop a
repeated (user, event id) within the service's dedup window.

Read: ``LogRead`` after a ``LogPosition`` (entry id + sequence number), with the
dedup window over the entry ids' milliseconds and the trimmed-event count from the
sequence numbers. A named reader's position is a cursor hash (``load_cursor``,
``commit_cursor``), not a consumer group: a group moves its position when entries
are delivered, while an export must move it only once its file is on disk, and
the cursor's compare-and-set keeps two exports with one name from both committing.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from service import keys
from service.settings import Settings
from skiprec.events import FIELD_SEPARATOR, StoredEvent, is_skip

logger = logging.getLogger(__name__)

LOG_SCRIPT = files("service").joinpath("lua/log_events.lua").read_text()
LOG_SCRIPT_SHA = hashlib.sha1(LOG_SCRIPT.encode()).hexdigest()
EVENT_FIELD = "e"  # an entry's event, as a stream line
SEQ_FIELD = "q"  # its sequence number
BATCH_FIELD = "events"  # entries written before one-entry-per-event: lines of a batch


def log_command(events: Sequence[StoredEvent], max_events: int) -> tuple[Any, ...]:
    """The ``EVALSHA`` that appends ``events`` (a pipeline's ``execute_command``)."""
    return (
        "EVALSHA",
        LOG_SCRIPT_SHA,
        2,
        keys.STREAM_KEY,
        keys.LOG_SEQ_KEY,
        max_events,
        *(event.stream_line() for event in events),
    )


DEFAULT_DEDUP_WINDOW_S = float(Settings.model_fields["dedup_ttl_s"].default)
CURSOR_ID_FIELD = "id"
CURSOR_SEQ_FIELD = "q"
# KEYS[1] - a reader's cursor hash (service.keys.log_cursor_key)
# ARGV[1] - the entry id it held when the export began ("" when it had none)
# ARGV[2] - the last entry id read; ARGV[3] - that entry's sequence number
# return 1 when committed, 0 when another export moved the cursor meanwhile
COMMIT_SCRIPT = """
local held = redis.call("HGET", KEYS[1], "id") or ""
if held ~= ARGV[1] then
  return 0
end
redis.call("HSET", KEYS[1], "id", ARGV[2], "q", ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class LogPosition:
    """A place in the log: the last entry read and its sequence number.

    ``START`` is before the first entry; ``seq`` is 0 there, and for an entry of
    an earlier release (they carry no sequence number).
    """

    entry_id: str
    seq: int


START = LogPosition("0-0", 0)


@dataclass(slots=True)
class ReadStats:
    """What one read went through (``LogRead.stats``, complete once it ends)."""

    position: LogPosition  # the last entry read (where a cursor commits to)
    entries: int = 0  # stream entries read after the start position
    events: int = 0  # events yielded
    duplicates: int = 0  # repeats of a (user, event id) dropped within the window
    trimmed: int = 0  # events trimmed off the stream before this reader reached them
    resets: int = 0  # times the sequence numbers restarted (the log was recreated)


class DedupWindow:
    """The (user, event id) pairs first seen within the last ``window_s``.

    Receive times come in ascending order (stream entry ids), so the oldest first
    occurrence is always at the front of the queue and forgetting is O(1) per pair:
    memory is bounded by one window of distinct events. The service's rule: a
    repeat within the window of the first occurrence is a duplicate, and the first
    occurrence's time is never refreshed by a repeat (ZADD NX in
    ``lua/append_events.lua``).
    """

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"dedup window must be positive, got {window_s!r}")
        self.window_ms = window_s * 1000.0
        self._first_ms: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._first_ms)

    def is_repeat(self, user_id: str, event_id: str, received_ms: int) -> bool:
        """Whether this event repeats one first seen within the window; if not,
        it is recorded as a first occurrence."""
        while self._order and received_ms - self._order[0][0] > self.window_ms:
            _, old = self._order.popleft()
            del self._first_ms[old]
        key = user_id + FIELD_SEPARATOR + event_id  # "|" never occurs in an id
        if key in self._first_ms:
            return True
        self._first_ms[key] = received_ms
        self._order.append((received_ms, key))
        return False


class LogRead:
    """One pass over the log after ``after``, up to the last entry at its start.

    Iterating yields each event once per dedup window, oldest first; ``stats``
    counts what was read, dropped and trimmed. Resuming after a cursor first
    re-reads (without yielding) the window's worth of entries before it, so a
    repeat of an event the previous read yielded is still dropped.
    Trimmed events are counted from the sequence numbers: a gap between the
    position and the next entry (on a first read, the first entry's number - 1),
    or between two entries (trimmed while this read ran), is events nobody read.
    """

    def __init__(
        self,
        client: Any,
        after: LogPosition = START,
        *,
        dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S,
        batch: int = 10_000,
    ) -> None:
        self._client = client
        self._after = after
        self._window = DedupWindow(dedup_window_s)
        self._batch = batch
        self.stats = ReadStats(after)

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self._events()

    async def _entries(self, low: str, high: str) -> AsyncIterator[tuple[str, Any]]:
        """Entries with ``low`` < id <= ``high`` (``low`` exclusive), in batches."""
        while True:
            entries = await self._client.xrange(
                keys.STREAM_KEY, min="(" + low, max=high, count=self._batch
            )
            for entry_id, fields in entries:
                yield _text(entry_id), fields
            if len(entries) < self._batch:
                return
            low = _text(entries[-1][0])

    async def _events(self) -> AsyncIterator[StoredEvent]:
        newest = await self._client.xrevrange(keys.STREAM_KEY, count=1)
        if not newest:
            return
        end = _text(newest[0][0])
        if self._after != START:
            await self._remember_window_before(self._after.entry_id)
        stats = self.stats
        async for entry_id, fields in self._entries(self._after.entry_id, end):
            seq = _seq(fields)
            if seq:
                self._count_gap(seq)
            stats.position = LogPosition(entry_id, seq or stats.position.seq)
            stats.entries += 1
            received_ms = _entry_ms(entry_id)
            for event in entry_events(fields):
                if self._is_repeat(event, received_ms):
                    stats.duplicates += 1
                    continue
                stats.events += 1
                yield event

    def _count_gap(self, seq: int) -> None:
        stats = self.stats
        previous = stats.position.seq
        if seq <= previous:
            # Numbers restart only when the counter and the stream were deleted
            # (the log recreated): the new log's earlier events were missed.
            logger.warning("the event log restarted its sequence at %d", seq)
            stats.resets += 1
            previous = 0
        stats.trimmed += seq - previous - 1

    async def _remember_window_before(self, entry_id: str) -> None:
        low_ms = max(_entry_ms(entry_id) - int(self._window.window_ms) - 1, 0)
        async for seen_id, fields in self._entries(f"{low_ms}-0", entry_id):
            for event in entry_events(fields):
                self._is_repeat(event, _entry_ms(seen_id))

    def _is_repeat(self, event: StoredEvent, received_ms: int) -> bool:
        # Entries of earlier releases may hold events without an id: never repeats.
        return bool(event.event_id) and self._window.is_repeat(
            event.user_id, event.event_id, received_ms
        )


def iter_log(
    client: Any,
    batch: int = 10_000,
    dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S,
) -> AsyncIterator[StoredEvent]:
    """The whole live event log oldest first, each event once per dedup window."""
    return aiter(LogRead(client, START, dedup_window_s=dedup_window_s, batch=batch))


async def load_cursor(client: Any, reader: str) -> LogPosition | None:
    """The reader's committed position, or ``None`` before its first commit."""
    held = await client.hgetall(keys.log_cursor_key(reader))
    if not held:
        return None
    data = {_text(k): _text(v) for k, v in held.items()}
    return LogPosition(data[CURSOR_ID_FIELD], int(data[CURSOR_SEQ_FIELD]))


async def commit_cursor(
    client: Any, reader: str, held: LogPosition | None, position: LogPosition
) -> bool:
    """Move the reader's cursor to ``position`` unless it is no longer ``held``
    (another export with the same reader committed first); whether it moved."""
    moved = await client.eval(
        COMMIT_SCRIPT,
        1,
        keys.log_cursor_key(reader),
        "" if held is None else held.entry_id,
        position.entry_id,
        position.seq,
    )
    return bool(int(moved))


def _entry_ms(entry_id: str) -> int:
    """A stream entry's receive time: the milliseconds part of its id."""
    return int(entry_id.partition("-")[0])


def _seq(fields: dict[Any, Any]) -> int:
    for name, value in fields.items():
        if _text(name) == SEQ_FIELD:
            return int(_text(value))
    return 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_events(fields: dict[Any, Any]) -> list[StoredEvent]:
    """The events of one stream entry: one event (``e``, ``q``), or from earlier
    releases a request's batch (``events``) or one event as fields ``id u t e ts``."""
    data = {_text(k): _text(v) for k, v in fields.items()}
    if SEQ_FIELD in data:
        events = [StoredEvent.from_stream_line(data[EVENT_FIELD])]
    elif BATCH_FIELD in data:
        lines = data[BATCH_FIELD].split("\n")
        events = [StoredEvent.from_stream_line(line) for line in lines]
    else:
        skipped = is_skip(data["e"])
        events = [
            StoredEvent(data["id"], data["u"], data["t"], skipped, float(data["ts"]))
        ]
    for event in events:
        if not math.isfinite(event.timestamp):
            raise ValueError(f"stream entry with a non-finite timestamp: {data!r}")
    return events
