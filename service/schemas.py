"""Pydantic wire models: what clients send and what the service answers.

Ids on the wire are 1..128 characters of ``[A-Za-z0-9._:@-]``: no whitespace, control
characters, braces (Redis hash tags) or the ``|`` that separates stored fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from skiprec.events import ID_PATTERN, EventType, parse_timestamp

MAX_ID_LENGTH = 128
MAX_K = 200
MAX_BATCH_LIMIT = 100_000  # hard ceiling; SKIPREC_MAX_BATCH is the enforced limit

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
]
FallbackReason = Literal["none", "cold-start", "store-unavailable"]


class PlaybackEvent(BaseModel):
    """One listening event: the user played or skipped a track."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier | None = Field(
        default=None, description="makes retries idempotent (per user)"
    )
    user_id: Identifier
    track_id: Identifier
    type: EventType
    timestamp: float | str | None = Field(
        default=None,
        description="unix seconds or ISO-8601; default: server receive time",
    )

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> float | None:
        return None if value is None else parse_timestamp(value)

    @property
    def unix_time(self) -> float | None:
        assert not isinstance(self.timestamp, str)  # the validator made it a float
        return self.timestamp


class EventBatch(BaseModel):
    """Several events in one request (at most SKIPREC_MAX_BATCH, default 1,000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[PlaybackEvent] = Field(min_length=1, max_length=MAX_BATCH_LIMIT)


class EventsAccepted(BaseModel):
    accepted: int
    duplicates: int


class RankedTrack(BaseModel):
    track_id: str
    score: float


class Recommendations(BaseModel):
    user_id: str
    model_version: str
    items: list[RankedTrack]
    fallback: bool
    fallback_reason: FallbackReason


class SessionEvent(BaseModel):
    event_id: str
    track_id: str
    type: EventType
    timestamp: float
    known: bool = Field(description="whether the model's vocabulary has the track")


class UserSession(BaseModel):
    user_id: str
    events: list[SessionEvent]
    skip_rate: float


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle_dir: str | None = Field(
        default=None, max_length=4096, description="default: SKIPREC_BUNDLE_DIR"
    )


class ReloadResult(BaseModel):
    model_version: str
    previous_version: str


class Health(BaseModel):
    status: str
    model_version: str | None = None
    redis: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail
