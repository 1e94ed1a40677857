"""Read a JSON request body under the service's limits, with errors naming the field.

Routes that take a body parse it here rather than through FastAPI's implicit body
parameter: the content type is enforced (415, also on an empty body), the size is
capped while streaming (413, even without a Content-Length), malformed JSON is a
400, and validation errors become one ``InvalidRequest`` whose message starts with
the field's path. ``BodyDeadline`` (middleware) bounds the time a client may take to
send a body (408).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    BodyTimeout,
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
    """The decoded JSON body; ``None`` for an empty body when ``optional``.

    The content type is required even when the body may be empty: without it a
    cross-origin POST is a CORS "simple request", which browsers send without asking
    the service first (no preflight), so any web page could trigger it.
    """
    content_type = request.headers.get("content-type")
    if content_type is None or not _is_json(content_type):
        raise UnsupportedMediaType(
            "Content-Type: must be application/json (also for an empty body)",
            "Content-Type",
        )
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


class BodyDeadline:
    """Answer 408 to a request whose body has not fully arrived ``timeout_s()`` seconds
    after the app first read it.

    The bound is on the whole body, not on the pause between chunks, so a client that
    trickles a byte at a time cannot hold a request open either. Pure ASGI around
    ``receive``, so it covers every body read in the app. The 408 closes the
    connection: the rest of the body may still be on its way and belongs to no
    request.
    """

    def __init__(self, app: ASGIApp, timeout_s: Callable[[], float]) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = 0.0
        deadline: float | None = None
        body_done = False
        timed_out = False

        async def receive_within_deadline() -> Message:
            nonlocal limit, deadline, body_done, timed_out
            if body_done:
                return await receive()
            if deadline is None:
                limit = self.timeout_s()
                deadline = time.monotonic() + limit
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise BodyTimeout(
                    f"body: not complete within {limit:g} s "
                    "(SKIPREC_BODY_TIMEOUT_S); send it in full right after the headers",
                    "body",
                ) from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        async def send_closing_after_timeout(message: Message) -> None:
            if timed_out and message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive_within_deadline, send_closing_after_timeout)
