"""The Python client of the skiprec HTTP API (httpx only; no torch, no service code).

    from skiprec.client import Event, SkiprecClient

    with SkiprecClient("http://127.0.0.1:8000", api_key="...") as client:
        client.send_event(Event("alice", "t12", "skip"))
        for item in client.recommendations("alice", k=5).items:
            print(item.track_id, item.score, item.p_skip)

``AsyncSkiprecClient`` has the same methods, awaited. Results are frozen
dataclasses (``skiprec.client.models``); errors are one exception tree
(``skiprec.client.errors``) that names the field to fix. Requests that fail for
want of an answer, with 503 (honouring ``Retry-After``) or 502/504 are retried
with exponential backoff and jitter (``RetryPolicy``); events get ids before the
first attempt, so a retried event is a duplicate, never a second play.
``send_events`` splits a list into the service's batch size, and
``client.event_buffer()`` batches events by count and age.
"""

try:
    import httpx  # noqa: F401  (the one dependency, checked before the modules need it)
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "skiprec.client needs httpx: pip install '.[client]' (the client extra)"
    ) from exc

from skiprec.client.async_client import AsyncEventBuffer, AsyncSkiprecClient
from skiprec.client.errors import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    ServerError,
    SkiprecError,
    TransportError,
    UnavailableError,
)
from skiprec.client.models import (
    Event,
    EventsAccepted,
    Health,
    RankedCandidates,
    RankedTrack,
    Recommendations,
    ReloadResult,
    SessionEvent,
    UnrankedTrack,
    UserSession,
    new_event_id,
)
from skiprec.client.retry import NO_RETRIES, RetryPolicy
from skiprec.client.sync_client import EventBuffer, SkiprecClient

__all__ = [
    "NO_RETRIES",
    "APIError",
    "AsyncEventBuffer",
    "AsyncSkiprecClient",
    "AuthenticationError",
    "Event",
    "EventBuffer",
    "EventsAccepted",
    "Health",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolError",
    "RankedCandidates",
    "RankedTrack",
    "Recommendations",
    "ReloadResult",
    "RetryPolicy",
    "ServerError",
    "SessionEvent",
    "SkiprecClient",
    "SkiprecError",
    "TransportError",
    "UnavailableError",
    "UnrankedTrack",
    "UserSession",
    "new_event_id",
]
