"""POST /events: store one event or a batch; 202 only once Redis holds them."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request, Response

from service.body import parse_events, read_json
from service.deps import IngestDep
from service.openapi import EVENTS_BODY, error_responses
from service.schemas import EventsAccepted

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    status_code=202,
    response_model=EventsAccepted,
    responses=error_responses(400, 408, 413, 415, 422, 503),
    openapi_extra=EVENTS_BODY,
)
async def post_events(request: Request, ingest: IngestDep) -> Response:
    """Append events to their users' live sessions (idempotent by event_id)."""
    payload = await read_json(request, ingest.max_body_bytes)
    events = parse_events(payload, ingest.max_batch)
    result = await ingest.record(events, time.time(), batch="events" in payload)
    body = {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "late": result.late,
    }
    return Response(orjson.dumps(body), status_code=202, media_type="application/json")
