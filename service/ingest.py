"""The events domain: accepted wire events -> stored events, counted once.

``Ingest.record`` is all of ``POST /events`` after parsing (the route's one
dependency: the store, the metrics and the request limits, built in the lifespan):

- **Event time.** An event happened at its ``timestamp`` (receive time when absent),
  shifted by ``receive time - sent_at`` when the client says when it sent the
  request (a device clock that runs slow or fast). One ahead of the server by more
  than ``max_clock_skew_s`` is refused (422 naming the field): it would outlive its
  session. One older than ``max_lateness_s`` is accepted into the event log and
  counted as ``late`` in the answer, but kept out of the live session. Every other
  event joins its listener's session in time order (``skiprec.sessions``).
- **Identity.** An event without ``event_id`` gets one derived from what a retry
  repeats: user, track, type and the client's timestamp; without a timestamp, from
  the receive time and its position in the request (so only a resend of the same
  call, not a client retry, is recognised). A retry is then a duplicate, not a
  second play.
- The batch goes to the store in one call, which returns only once Redis holds every
  event (and has counted the served lists they answer, ``service.outcomes``; an
  event's ``request_id`` names its list); the metrics count what the store
  accepted, not what was sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import InvalidRequest, format_location
from service.metrics import Metrics
from service.schemas import PlaybackEvent
from service.session_store import AppendResult, SessionStore
from skiprec.events import FIELD_SEPARATOR, StoredEvent, is_skip

DERIVED_ID_PREFIX = "auto-"


@dataclass(frozen=True, slots=True)
class EventTimeBounds:
    max_clock_skew_s: float  # how far ahead of the server an event may be
    max_lateness_s: float  # how old an event may be and still join its session


def derived_event_id(event: PlaybackEvent, now: float, position: int) -> str:
    """The id of an event sent without one: equal for a client's retry."""
    parts = [event.user_id, event.track_id, event.type]
    if event.unix_time is not None:
        parts.append(repr(event.unix_time))
    else:
        parts += (repr(now), str(position))
    digest = hashlib.blake2b(FIELD_SEPARATOR.join(parts).encode(), digest_size=12)
    return DERIVED_ID_PREFIX + digest.hexdigest()


def event_time(event: PlaybackEvent, now: float) -> float:
    """When the event happened, by the server's clock."""
    if event.unix_time is None:
        return now
    if event.sent_time is None:
        return event.unix_time
    return event.unix_time + (now - event.sent_time)


def stored_event(event: PlaybackEvent, now: float, position: int) -> StoredEvent:
    return StoredEvent(
        event.event_id or derived_event_id(event, now, position),
        event.user_id,
        event.track_id,
        is_skip(event.type),
        event_time(event, now),
        event.level,
    )


def check_times(
    stored: Sequence[StoredEvent], now: float, bounds: EventTimeBounds, batch: bool
) -> set[int]:
    """Positions of the late events; raises ``InvalidRequest`` for a future one."""
    late: set[int] = set()
    for position, event in enumerate(stored):
        ahead = event.timestamp - now
        if ahead > bounds.max_clock_skew_s:
            field = format_location(
                ("events", position, "timestamp") if batch else ("timestamp",)
            )
            raise InvalidRequest(
                f"{field}: {ahead:.0f} s ahead of the server clock (at most "
                f"{bounds.max_clock_skew_s:g} s); fix the device clock, send sent_at "
                "(the client's clock at sending) or omit timestamp",
                field,
            )
        if -ahead > bounds.max_lateness_s:
            late.add(position)
    return late


@dataclass(frozen=True, slots=True)
class Ingest:
    """The events domain as the route reaches it."""

    store: SessionStore
    metrics: Metrics
    bounds: EventTimeBounds
    max_batch: int  # events per request
    max_body_bytes: int

    async def record(
        self, events: Sequence[PlaybackEvent], now: float, *, batch: bool
    ) -> AppendResult:
        stored = [stored_event(e, now, i) for i, e in enumerate(events)]
        late = check_times(stored, now, self.bounds, batch)
        named = {i: e.request_id for i, e in enumerate(events) if e.request_id}
        result = await self.store.append(stored, now, late, named)
        metrics = self.metrics
        if result.duplicates:
            metrics.duplicates.inc(result.duplicates)
        if result.late:
            metrics.late_events.inc(result.late)
        if result.accepted_skips:
            metrics.events.labels(type="skip").inc(result.accepted_skips)
        played = result.accepted - result.accepted_skips
        if played:
            metrics.events.labels(type="play").inc(played)
        return result
