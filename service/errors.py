"""Domain exceptions of the service and the one table that maps them to HTTP.

Hierarchy::

    ServiceError                      500  (never raised directly)
    ├── ClientError                   4xx: a wrong request; the message names the field
    │   ├── InvalidRequest            422  a field failed validation
    │   ├── MalformedBody             400  the body is not JSON
    │   ├── UnsupportedMediaType      415  the body is not application/json
    │   ├── BodyTooLarge              413  over SKIPREC_MAX_BODY_BYTES
    │   ├── Unauthorized              401  missing or wrong API key
    │   ├── BundleRejected            409  reload refused; the old bundle keeps serving
    │   └── BodyTimeout               408  body slower than SKIPREC_BODY_TIMEOUT_S
    ├── SessionStoreUnavailable       503 + Retry-After  Redis unreachable, timed out or
    │                                                    refusing (OOM, READONLY, ...)
    ├── Overloaded                    503 + Retry-After  inference queue full (shed)
    └── ModelUnavailable              503 + Retry-After  no bundle loaded, or the
        │                                                inference worker restarting
        └── InferenceFailed           503 + Retry-After  a batch's ONNX call raised
                                                         (recommend falls back first)

Responses carry ``{"error": {"code", "message", "field"}}``: never a stack trace or a
server path. Unexpected exceptions become a bare 500 and are logged server-side.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ClientError(ServiceError):
    status_code = 400
    code = "bad_request"


class InvalidRequest(ClientError):
    status_code = 422
    code = "invalid_request"


class MalformedBody(ClientError):
    status_code = 400
    code = "malformed_json"


class UnsupportedMediaType(ClientError):
    status_code = 415
    code = "unsupported_media_type"


class BodyTooLarge(ClientError):
    status_code = 413
    code = "body_too_large"


class Unauthorized(ClientError):
    status_code = 401
    code = "unauthorized"


class BundleRejected(ClientError):
    status_code = 409
    code = "bundle_rejected"


class SessionStoreUnavailable(ServiceError):
    status_code = 503
    code = "session_store_unavailable"


class ModelUnavailable(ServiceError):
    status_code = 503
    code = "model_unavailable"


class InferenceFailed(ModelUnavailable):
    """The ONNX call of a request's batch raised (a 503 only if nobody catches it)."""


class Overloaded(ServiceError):
    """More requests wait for inference than SKIPREC_MAX_INFERENCE_QUEUE: shed at
    once, so a client retries elsewhere instead of queueing for seconds."""

    status_code = 503
    code = "overloaded"


class BodyTimeout(ClientError):
    status_code = 408
    code = "body_timeout"


def error_response(
    status_code: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return Response(
        orjson.dumps(body),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def format_location(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "events", 3, "track_id")`` -> ``"events[3].track_id"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("body",) and not out:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def validation_message(errors: list[Any]) -> tuple[str, str]:
    """The first pydantic error as ``(field, "field: message")``."""
    first = errors[0]
    field = format_location(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return field, f"{field}: {message}"


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    headers = {}
    if exc.status_code == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "ApiKey"
    if exc.status_code >= 500:
        logger.warning("%s: %s", exc.code, exc.message)
    return error_response(exc.status_code, exc.code, exc.message, exc.field, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    field, message = validation_message(list(exc.errors()))
    return error_response(422, InvalidRequest.code, message, field)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(
        exc.status_code, "http_error", str(exc.detail), None, dict(exc.headers or {})
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, ServiceError.code, "internal server error")


def register_error_handlers(app: FastAPI) -> None:
    """The single exception -> HTTP table of the service."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
