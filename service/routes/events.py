"""POST /events: store one event or a batch; 202 only once Redis holds them."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request, Response

from service.body import parse_events, read_json
from service.deps import ApiKeyDep, MetricsDep, SessionStoreDep, SettingsDep
from service.openapi import EVENTS_BODY, error_responses
from service.schemas import EventsAccepted
from service.session_store import StoredEvent

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    status_code=202,
    dependencies=[ApiKeyDep],
    response_model=EventsAccepted,
    responses=error_responses(400, 401, 413, 415, 422, 503),
    openapi_extra=EVENTS_BODY,
)
async def post_events(
    request: Request,
    settings: SettingsDep,
    store: SessionStoreDep,
    metrics: MetricsDep,
) -> Response:
    """Append events to their users' live sessions (idempotent by event_id)."""
    payload = await read_json(request, settings.max_body_bytes)
    events = parse_events(payload, settings.max_batch)
    now = time.time()
    stored = [
        StoredEvent(
            event.event_id or "",
            event.user_id,
            event.track_id,
            event.type,
            event.unix_time if event.unix_time is not None else now,
        )
        for event in events
    ]
    result = await store.append(stored, now)
    if result.duplicates:
        metrics.duplicates.inc(result.duplicates)
    if result.accepted_skips:
        metrics.events.labels(type="skip").inc(result.accepted_skips)
    if result.accepted > result.accepted_skips:
        metrics.events.labels(type="play").inc(result.accepted - result.accepted_skips)
    body = {"accepted": result.accepted, "duplicates": result.duplicates}
    return Response(orjson.dumps(body), status_code=202, media_type="application/json")
