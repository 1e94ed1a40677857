"""The client's exceptions: one tree, built from the service's error body.

Hierarchy::

    SkiprecError                 base of everything the client raises on purpose
    ├── APIError                 the service answered with an error status
    │   ├── InvalidRequestError  4xx (400, 408, 409, 413, 415, 422): fix the request;
    │   │                        ``.field`` names what to fix
    │   ├── AuthenticationError  401/403: missing or wrong API key
    │   ├── NotFoundError        404: no such route (a base_url with a wrong path)
    │   ├── UnavailableError     503 after the retries: Redis, the model or the
    │   │                        inference queue; ``.retry_after`` from the header
    │   └── ServerError          any other 5xx (500; 502/504 after the retries)
    ├── TransportError           no answer: connection refused or reset, timeout
    │                            (after the retries); ``__cause__`` is httpx's error
    └── ProtocolError            an answer the API does not define (not JSON, a
                                 missing field): a proxy in the way, or a version skew

The service's error body is ``{"error": {"code", "message", "field"}}``, the message
starting with the field (``service/errors.py``); ``.code``, ``.message`` and
``.field`` are copied from it. A body without that shape (a proxy's HTML page) keeps
``code = "http_<status>"`` and the start of its text as the message.
"""

from __future__ import annotations

from typing import Any

import httpx

MESSAGE_SNIPPET = 200  # characters of a non-API error body kept in the message


class SkiprecError(Exception):
    """Base of every error the client raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIError(SkiprecError):
    """The service answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.field = field
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"


class InvalidRequestError(APIError):
    """A 4xx other than 401/403/404: the request is wrong and retrying won't help."""


class AuthenticationError(APIError):
    """401/403: the API key is missing or wrong."""


class NotFoundError(APIError):
    """404: the route does not exist at this base URL."""


class UnavailableError(APIError):
    """503, still after the retries: the service can't serve this now."""


class ServerError(APIError):
    """Another 5xx: a server fault (or a gateway's 502/504 after the retries)."""


class TransportError(SkiprecError):
    """No answer came back (after the retries); ``__cause__`` is httpx's error."""


class ProtocolError(SkiprecError):
    """The answer does not have the shape the API defines."""


def _error_class(status_code: int) -> type[APIError]:
    if status_code in (401, 403):
        return AuthenticationError
    if status_code == 404:
        return NotFoundError
    if status_code == 503:
        return UnavailableError
    if status_code >= 500:
        return ServerError
    return InvalidRequestError


def _error_detail(response: httpx.Response) -> tuple[str, str, str | None]:
    """``(code, message, field)`` from the service's error body, or from the text."""
    try:
        body: Any = response.json()
        detail = body["error"]
        code, message, field = detail["code"], detail["message"], detail.get("field")
        if isinstance(code, str) and isinstance(message, str):
            return code, message, field if isinstance(field, str) else None
    except (ValueError, KeyError, TypeError):
        pass  # not the API's error body: described from the status and the text
    text = response.text.strip()[:MESSAGE_SNIPPET]
    message = response.reason_phrase + (f": {text}" if text else "")
    return f"http_{response.status_code}", message, None


def error_from_response(
    response: httpx.Response, retry_after: float | None = None
) -> APIError:
    """The exception for an error answer (its class chosen by the status)."""
    code, message, field = _error_detail(response)
    return _error_class(response.status_code)(
        message,
        status_code=response.status_code,
        code=code,
        field=field,
        retry_after=retry_after,
    )
