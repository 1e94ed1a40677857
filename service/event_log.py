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
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files
from typing import Any

from service import keys
from skiprec.events import StoredEvent, is_skip

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


async def iter_log(client: Any, batch: int = 10_000) -> AsyncIterator[StoredEvent]:
    """The live event log oldest first, each (user, event id) once."""
    seen: set[tuple[str, str]] = set()
    start = "-"
    while True:
        entries = await client.xrange(keys.STREAM_KEY, min=start, max="+", count=batch)
        for _entry_id, fields in entries:
            for event in entry_events(fields):
                if event.event_id:
                    # Event ids are unique per user (that is the dedup scope).
                    key = (event.user_id, event.event_id)
                    if key in seen:
                        continue
                    seen.add(key)
                yield event
        if len(entries) < batch:
            return
        start = "(" + _text(entries[-1][0])


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
