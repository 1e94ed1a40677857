"""Pydantic wire models: what clients send and what the service answers.

Ids on the wire are 1..128 characters of ``[A-Za-z0-9._:@-]``: no whitespace, control
characters, braces (Redis hash tags) or the ``|`` that separates stored fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from skiprec.events import (
    ID_PATTERN,
    SKIP_LEVELS,
    SKIP_MAX_LEVEL,
    EventType,
    is_skip,
    level_from_play_time,
    level_is_skip,
    parse_timestamp,
)

MAX_ID_LENGTH = 128
MAX_K = 200
MAX_CANDIDATES = 1000
MAX_BATCH_LIMIT = 100_000  # hard ceiling; SKIPREC_MAX_BATCH is the enforced limit

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
]
FallbackReason = Literal["none", "cold-start", "store-unavailable", "model-error"]


class PlaybackEvent(BaseModel):
    """One listening event: the user played or skipped a track."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier | None = Field(
        default=None, description="makes retries idempotent (per user)"
    )
    user_id: Identifier
    track_id: Identifier
    type: EventType
    skip_level: int | None = Field(
        default=None,
        ge=min(SKIP_LEVELS),
        le=max(SKIP_LEVELS),
        description="optional grade: 0 skipped at the very start, 1 skipped early, "
        "2 skipped late (most heard), 3 heard to the end; 'skip' means level <= 1",
    )
    played_ms: float | None = Field(
        default=None, ge=0.0, allow_inf_nan=False, description="instead of skip_level"
    )
    duration_ms: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        validate_default=True,
        description="the track's length; with played_ms, sets the skip level",
    )
    timestamp: float | str | None = Field(
        default=None,
        description="when it happened, by the client's clock: unix seconds or "
        "ISO-8601; default: server receive time. More than SKIPREC_MAX_CLOCK_SKEW_S "
        "ahead of the server (after the sent_at correction) is refused",
    )
    sent_at: float | str | None = Field(
        default=None,
        description="the client's clock when it sent the request (same form as "
        "timestamp): the service shifts timestamp by (receive time - sent_at), which "
        "cancels a device clock that runs fast or slow",
    )
    request_id: Identifier | None = Field(
        default=None,
        description="the request_id of the recommendations this event answers "
        "(the listener played or skipped from that list); default: the newest list "
        "served to this user, if it still waits for its next event",
    )

    @field_validator("skip_level")
    @classmethod
    def _level_matches_type(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and "type" in info.data:
            _check_agrees(value, info.data["type"])
        return value

    @field_validator("duration_ms")
    @classmethod
    def _play_time(cls, value: float | None, info: ValidationInfo) -> float | None:
        played = info.data.get("played_ms")
        if (played is None) != (value is None):
            raise ValueError("played_ms and duration_ms go together")
        if value is not None and played is not None:
            if info.data.get("skip_level") is not None:
                raise ValueError("give skip_level or played_ms + duration_ms, not both")
            if "type" in info.data:
                _check_agrees(level_from_play_time(played, value), info.data["type"])
        return value

    @field_validator("timestamp", "sent_at", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> float | None:
        return None if value is None else parse_timestamp(value)

    @property
    def level(self) -> int | None:
        """The event's skip level: sent, or from its play time, or None."""
        if self.played_ms is not None and self.duration_ms is not None:
            return level_from_play_time(self.played_ms, self.duration_ms)
        return self.skip_level

    @property
    def unix_time(self) -> float | None:
        assert not isinstance(self.timestamp, str)  # the validator made it a float
        return self.timestamp

    @property
    def sent_time(self) -> float | None:
        assert not isinstance(self.sent_at, str)  # the validator made it a float
        return self.sent_at


def _check_agrees(level: int, event: str) -> None:
    if level_is_skip(level) != is_skip(event):
        raise ValueError(
            f"skip level {level} contradicts type {event!r} "
            f"(a skip is level <= {SKIP_MAX_LEVEL})"
        )


class EventBatch(BaseModel):
    """Several events in one request (at most SKIPREC_MAX_BATCH, default 1,000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[PlaybackEvent] = Field(min_length=1, max_length=MAX_BATCH_LIMIT)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="new events stored (late ones included)")
    duplicates: int = Field(description="events already stored (retries)")
    late: int = Field(
        description="of the accepted, events older than SKIPREC_MAX_LATENESS_S: in "
        "the event log (training data), not in the live session"
    )


class RankedTrack(BaseModel):
    track_id: str
    score: float
    p_skip: float | None = Field(
        description="P(the listener skips it if it is played next); null when the "
        "model has no skip head or the answer is a fallback"
    )


class RankCandidates(BaseModel):
    """Tracks from another system (a search, an editor's list) to order for one
    listener's live session."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: list[Identifier] = Field(min_length=1, max_length=MAX_CANDIDATES)
    exclude_played: bool | None = Field(
        default=None, description="as on GET /recommendations"
    )


class UnrankedTrack(BaseModel):
    track_id: str
    reason: Literal["unknown", "excluded"]


class RankedCandidates(BaseModel):
    user_id: str
    model_version: str
    variant: str = Field(description="the experiment variant that ranked them")
    items: list[RankedTrack]
    unranked: list[UnrankedTrack] = Field(
        description="candidates left out: unknown to the model, or excluded by the "
        "session policy"
    )
    fallback: bool
    fallback_reason: FallbackReason


class Recommendations(BaseModel):
    user_id: str
    model_version: str
    request_id: str = Field(
        description="names this list: send it as the request_id of the event that "
        "answers it (opaque)"
    )
    variant: str = Field(
        description="the experiment variant that served it (SKIPREC_VARIANTS; "
        "'default' without)"
    )
    items: list[RankedTrack]
    fallback: bool
    fallback_reason: FallbackReason


class SessionEvent(BaseModel):
    event_id: str
    track_id: str
    type: EventType
    skip_level: int | None
    timestamp: float
    known: bool = Field(description="whether the model's vocabulary has the track")


class UserSession(BaseModel):
    user_id: str
    events: list[SessionEvent]
    skip_rate: float


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle_dir: str | None = Field(
        default=None,
        max_length=4096,
        description="default: the variant's configured bundle (SKIPREC_BUNDLE_DIR "
        "without variants)",
    )
    variant: str | None = Field(
        default=None,
        max_length=64,
        description="which variant to reload; required when SKIPREC_VARIANTS is set",
    )


class ReloadResult(BaseModel):
    model_version: str
    previous_version: str
    variant: str


class ExperimentRate(BaseModel):
    value: float | None = Field(description="successes / trials; null: no trials")
    low: float = Field(description="95% Wilson score interval")
    high: float
    successes: int
    trials: int


class ExperimentDifference(BaseModel):
    value: float | None = Field(description="this arm's rate minus the control's")
    low: float = Field(description="95% interval (Newcombe's hybrid score)")
    high: float


class ExperimentArm(BaseModel):
    variant: str
    model_version: str
    served: int = Field(description="lists served (model and fallback answers)")
    fallbacks: int = Field(description="of those, popularity fallback answers")
    answered: int = Field(
        description="model answers followed by the listener's next event: the "
        "denominator of the rates"
    )
    rates: dict[str, ExperimentRate] = Field(
        description="over model answers: hit (next track in the top k), "
        "hit_played, hit_skipped, next_skipped (the next event was a skip)"
    )
    fallback_rates: dict[str, ExperimentRate] = Field(
        description="the same over fallback answers (cold starts, outages)"
    )
    vs_control: dict[str, ExperimentDifference] | None = Field(
        description="rates minus the control arm's; null for the control"
    )


class Experiments(BaseModel):
    k: int = Field(description="the cut-off of the hit rates")
    control: str | None = Field(
        description="the arm the differences are against: the first variant's "
        "newest model version"
    )
    arms: list[ExperimentArm]


class Health(BaseModel):
    """``/readyz`` follows the model alone; Redis is reported, never a reason to
    leave the load balancer (the popularity fallback answers without it)."""

    status: Literal["ok", "ready", "unavailable"]
    model_version: str | None = Field(description="null while no bundle is loaded")
    redis: Literal["ok", "unreachable"]
    inference: Literal["ok", "restarting"] = Field(
        description="the inference worker; restarting after it died"
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail
