"""Read a JSON request body under the service's limits, with errors naming the field.

Routes that take a body parse it here rather than through FastAPI's implicit body
parameter: the content type is enforced (415), the size is capped while streaming
(413, even without a Content-Length), malformed JSON is a 400, and validation
errors become one ``InvalidRequest`` whose message starts with the field's path.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from service.errors import (
    BodyTooLarge,
    InvalidRequest,
    MalformedBody,
    UnsupportedMediaType,
    validation_message,
)
from service.schemas import EventBatch, PlaybackEvent

ModelT = TypeVar("ModelT", bound=BaseModel)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def read_json(request: Request, max_bytes: int, *, optional: bool = False) -> Any:
    """The decoded JSON body; ``None`` for an empty body when ``optional``."""
    content_type = request.headers.get("content-type")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length: not a number", "Content-Length")
        if int(declared) > max_bytes:
            raise BodyTooLarge(f"body: larger than {max_bytes} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body: larger than {max_bytes} bytes", "body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw and optional:
        return None
    if content_type is None or not _is_json(content_type):
        raise UnsupportedMediaType(
            "Content-Type: must be application/json", "Content-Type"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"body: malformed JSON ({exc})", "body") from None


def validate(model: type[ModelT], payload: Any) -> ModelT:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        field, message = validation_message(
            list(exc.errors(include_url=False, include_input=False))
        )
        raise InvalidRequest(message, field) from None


def parse_events(payload: Any, max_batch: int) -> list[PlaybackEvent]:
    """One event object or ``{"events": [...]}`` -> the events, in order."""
    if not isinstance(payload, dict):
        raise InvalidRequest(
            'body: expected an event object or {"events": [...]}', "body"
        )
    if "events" in payload:
        events = payload["events"]
        if isinstance(events, list) and len(events) > max_batch:
            raise InvalidRequest(
                f"events: at most {max_batch} events per request, got {len(events)}",
                "events",
            )
        return validate(EventBatch, payload).events
    return [validate(PlaybackEvent, payload)]
