"""The events domain: accepted wire events -> stored events, counted once.

``record_events`` is all of ``POST /events`` after parsing: an event without a
timestamp takes the receive time, the batch goes to the store in one call (which
returns only once Redis holds every event), and the metrics count what the store
accepted, not what was sent (retries are duplicates).
"""

from __future__ import annotations

from collections.abc import Sequence

from service.metrics import Metrics
from service.schemas import PlaybackEvent
from service.session_store import AppendResult, SessionStore
from skiprec.events import StoredEvent, is_skip


def stored_event(event: PlaybackEvent, now: float) -> StoredEvent:
    return StoredEvent(
        event.event_id or "",
        event.user_id,
        event.track_id,
        is_skip(event.type),
        event.unix_time if event.unix_time is not None else now,
        event.level,
    )


async def record_events(
    store: SessionStore, metrics: Metrics, events: Sequence[PlaybackEvent], now: float
) -> AppendResult:
    result = await store.append([stored_event(e, now) for e in events], now)
    if result.duplicates:
        metrics.duplicates.inc(result.duplicates)
    if result.accepted_skips:
        metrics.events.labels(type="skip").inc(result.accepted_skips)
    if result.accepted > result.accepted_skips:
        metrics.events.labels(type="play").inc(result.accepted - result.accepted_skips)
    return result
