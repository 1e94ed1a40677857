"""What the client sends and what it returns: frozen dataclasses, parsed once.

``Event`` is one listening event as ``POST /events`` takes it (README.md, HTTP API).
The result classes mirror the service's answers (``service/schemas.py``); fields the
service added later (``request_id``, ``variant``) are ``None`` when it does not send
them, so the client works against older and newer services alike. A parser that
meets an answer without a required field raises ``ProtocolError``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from skiprec.client.errors import ProtocolError

EventType = Literal["play", "skip"]
Timestamp = float | str | datetime  # unix seconds, ISO-8601 text, or a datetime
T = TypeVar("T")


def new_event_id() -> str:
    """A fresh client-side event id (uuid4 hex: inside the service's id pattern)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Event:
    """One listening event: ``user_id`` played or skipped ``track_id``.

    ``event_id`` makes a resend a duplicate. The client gives an event without one
    a fresh id before its first attempt, so its own retries are recognised; call
    ``with_id()`` first to keep the id yourself and resend safely after an error.
    Give ``skip_level`` (0..3) or ``played_ms`` + ``duration_ms``, not both.
    ``timestamp`` is when it happened by this device's clock (default: when the
    service receives it); ``sent_at`` is set at each attempt when the client is
    made with ``correct_clock_skew=True`` (the service then cancels a clock that
    runs fast or slow). ``request_id`` attributes the event to the recommendation
    answer it followed.
    """

    user_id: str
    track_id: str
    type: EventType
    skip_level: int | None = None
    played_ms: float | None = None
    duration_ms: float | None = None
    timestamp: Timestamp | None = None
    sent_at: Timestamp | None = None
    request_id: str | None = None
    event_id: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ("play", "skip"):
            raise ValueError(f"type: expected 'play' or 'skip', got {self.type!r}")

    def with_id(self) -> Event:
        """This event with an ``event_id``: its own, or a fresh one."""
        return (
            self
            if self.event_id is not None
            else replace(self, event_id=new_event_id())
        )

    def to_json(self, sent_at: float | None = None) -> dict[str, Any]:
        """The wire object; unset fields are left out (``sent_at`` default: its own)."""
        body: dict[str, Any] = {
            "user_id": self.user_id,
            "track_id": self.track_id,
            "type": self.type,
        }
        optional = {
            "event_id": self.event_id,
            "skip_level": self.skip_level,
            "played_ms": self.played_ms,
            "duration_ms": self.duration_ms,
            "timestamp": _wire_time(self.timestamp),
            "sent_at": _wire_time(self.sent_at) if sent_at is None else sent_at,
            "request_id": self.request_id,
        }
        body.update(
            {name: value for name, value in optional.items() if value is not None}
        )
        return body


def _wire_time(value: Timestamp | None) -> float | str | None:
    """A datetime as unix seconds (naive = UTC, as the service reads it)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.timestamp()
    return value


@dataclass(frozen=True, slots=True)
class EventsAccepted:
    """``POST /events``'s answer; summed over the requests of a split batch."""

    accepted: int  # new events stored (late ones included)
    duplicates: int  # already stored: resends and retries
    late: int  # of the accepted, too old for the live session (in the event log)

    def __add__(self, other: EventsAccepted) -> EventsAccepted:
        return EventsAccepted(
            self.accepted + other.accepted,
            self.duplicates + other.duplicates,
            self.late + other.late,
        )


NO_EVENTS = EventsAccepted(0, 0, 0)


@dataclass(frozen=True, slots=True)
class RankedTrack:
    track_id: str
    score: float
    p_skip: float | None  # None without a skip head, or on a fallback


@dataclass(frozen=True, slots=True)
class Recommendations:
    """``GET /recommendations/{user_id}``: the next tracks, best first."""

    user_id: str
    model_version: str
    items: tuple[RankedTrack, ...]
    fallback: bool
    fallback_reason: str  # none, cold-start, store-unavailable, model-error
    request_id: str | None = None  # None from a service that sends none
    variant: str | None = None

    @property
    def track_ids(self) -> list[str]:
        return [item.track_id for item in self.items]


@dataclass(frozen=True, slots=True)
class UnrankedTrack:
    track_id: str
    reason: str  # unknown (to the model) or excluded (by the session policy)


@dataclass(frozen=True, slots=True)
class RankedCandidates:
    """``POST /recommendations/{user_id}/rank``: the candidates, best first."""

    user_id: str
    model_version: str
    items: tuple[RankedTrack, ...]
    unranked: tuple[UnrankedTrack, ...]
    fallback: bool
    fallback_reason: str
    request_id: str | None = None
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class SessionEvent:
    event_id: str
    track_id: str
    type: EventType
    skip_level: int | None
    timestamp: float  # unix seconds, by the server's clock
    known: bool  # whether the model's vocabulary has the track


@dataclass(frozen=True, slots=True)
class UserSession:
    """``GET /users/{user_id}/session``: the current session, oldest first."""

    user_id: str
    events: tuple[SessionEvent, ...]
    skip_rate: float


@dataclass(frozen=True, slots=True)
class Health:
    """``/healthz`` and ``/readyz``: status ``ok``, ``ready`` or ``unavailable``."""

    status: str
    model_version: str | None
    redis: str  # ok or unreachable (never a reason to be unready)
    inference: str  # ok or restarting

    @property
    def ready(self) -> bool:
        return self.status == "ready"


@dataclass(frozen=True, slots=True)
class ReloadResult:
    model_version: str
    previous_version: str
    variant: str | None = None  # the variant reloaded (None from an older service)


# --- parsing ----------------------------------------------------------------------


def parsing(what: str, parse: Callable[[Any], T]) -> Callable[[Any], T]:
    """``parse`` with a missing or mistyped field turned into ``ProtocolError``."""

    def checked(body: Any) -> T:
        try:
            return parse(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"{what}: unexpected answer ({exc!r})") from exc

    return checked


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    return None if value is None else str(value)


def _tracks(items: Iterable[Mapping[str, Any]]) -> tuple[RankedTrack, ...]:
    return tuple(
        RankedTrack(
            str(item["track_id"]),
            float(item["score"]),
            None if item.get("p_skip") is None else float(item["p_skip"]),
        )
        for item in items
    )


def parse_events_accepted(body: Mapping[str, Any]) -> EventsAccepted:
    return EventsAccepted(
        int(body["accepted"]), int(body["duplicates"]), int(body["late"])
    )


def parse_recommendations(body: Mapping[str, Any]) -> Recommendations:
    return Recommendations(
        user_id=str(body["user_id"]),
        model_version=str(body["model_version"]),
        items=_tracks(body["items"]),
        fallback=bool(body["fallback"]),
        fallback_reason=str(body["fallback_reason"]),
        request_id=_optional_str(body, "request_id"),
        variant=_optional_str(body, "variant"),
    )


def parse_ranked_candidates(body: Mapping[str, Any]) -> RankedCandidates:
    return RankedCandidates(
        user_id=str(body["user_id"]),
        model_version=str(body["model_version"]),
        items=_tracks(body["items"]),
        unranked=tuple(
            UnrankedTrack(str(u["track_id"]), str(u["reason"]))
            for u in body["unranked"]
        ),
        fallback=bool(body["fallback"]),
        fallback_reason=str(body["fallback_reason"]),
        request_id=_optional_str(body, "request_id"),
        variant=_optional_str(body, "variant"),
    )


def _event_type(value: Any) -> EventType:
    if value == "play":
        return "play"
    if value == "skip":
        return "skip"
    raise ValueError(f"event type {value!r}")


def parse_user_session(body: Mapping[str, Any]) -> UserSession:
    return UserSession(
        user_id=str(body["user_id"]),
        events=tuple(
            SessionEvent(
                event_id=str(e["event_id"]),
                track_id=str(e["track_id"]),
                type=_event_type(e["type"]),
                skip_level=None
                if e.get("skip_level") is None
                else int(e["skip_level"]),
                timestamp=float(e["timestamp"]),
                known=bool(e["known"]),
            )
            for e in body["events"]
        ),
        skip_rate=float(body["skip_rate"]),
    )


def parse_health(body: Mapping[str, Any]) -> Health:
    return Health(
        status=str(body["status"]),
        model_version=_optional_str(body, "model_version"),
        redis=str(body["redis"]),
        inference=str(body["inference"]),
    )


def parse_reload_result(body: Mapping[str, Any]) -> ReloadResult:
    return ReloadResult(
        str(body["model_version"]),
        str(body["previous_version"]),
        _optional_str(body, "variant"),
    )


def parse_object(body: Any) -> dict[str, Any]:
    """A JSON object as it came (``/admin/experiments``: its shape still moves)."""
    if not isinstance(body, dict):
        raise TypeError(f"expected a JSON object, got {type(body).__name__}")
    return body
