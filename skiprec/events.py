"""Listening events and every format they travel in: the one definition.

Inside the code an event is ``skipped: bool`` (MSSD's ``skip_2`` sense). At the
edges it has three spellings, each defined here and nowhere else:

- the word ``"play"``/``"skip"``: the API's ``type`` field and the event log's
  ``event`` column (``EVENT_TYPES``, ``event_type``, ``is_skip``);
- one character inside a stored event (``StoredEvent.encode``): ``"p"``/``"s"``
  for an event without a grade, its skip level ``"0"``..``"3"`` for a graded one;
- the model's integer feedback code (``skiprec.encoding.feedback_code``).

Formats:

- **Stored event** (one entry of a listener's Redis list):
  ``event_id|track_id|code|unix seconds with 3 decimals``; ``code`` is ``p``/``s`` or
  the skip level's digit; ``event_id`` is "" when the client sent none.
  ``service/lua/*.lua`` parse it too (the only other copy, under an equality
  test). ``|`` never occurs in an id (``ID_PATTERN``).
- **Stream line** (one event of an entry of the global event stream): the same with
  the user id after the event id: ``event_id|user_id|track_id|code|seconds``.
- **Event log** (CSV): ``user_id,track_id,event,timestamp`` plus an optional
  ``skip_level`` column (empty for an event without a grade): what ``skiprec events
  export`` writes and ``skiprec train --format events`` reads.

Timestamps are unix seconds, or ISO-8601 strings (naive means UTC) on input.
Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

EventType = Literal["play", "skip"]
EVENT_TYPES: tuple[EventType, ...] = ("play", "skip")
# MSSD's graded scale: 0 skipped at the very start (skip_1), 1 skipped early (skip_2,
# the binary ground truth), 2 skipped late, most of the track heard (skip_3), 3 heard
# to the end. An event is a skip exactly when its level is <= SKIP_MAX_LEVEL.
SKIP_LEVELS = (0, 1, 2, 3)
SKIP_MAX_LEVEL = 1
# played_ms / duration_ms -> level: below each fraction, that level (documented in
# docs/ARCHITECTURE.md; MSSD does not publish its own cut-offs).
LEVEL_FRACTIONS = (0.1, 0.5, 0.95)
ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
FIELD_SEPARATOR = "|"  # never in an id (ID_PATTERN)
STORED_PLAY = "p"
STORED_SKIP = "s"
EVENT_LOG_COLUMNS = ("user_id", "track_id", "event", "timestamp")
EVENT_LOG_LEVEL_COLUMN = "skip_level"  # optional when reading, always written
EVENT_LOG_HEADER = (*EVENT_LOG_COLUMNS, EVENT_LOG_LEVEL_COLUMN)
# Unix seconds accepted as event times: 1970 .. 5138 (beyond that is a unit mistake).
MAX_TIMESTAMP = 1e11
MAX_ISO_LENGTH = 64


def event_type(skipped: bool) -> EventType:
    return "skip" if skipped else "play"


def is_skip(word: str) -> bool:
    """``"skip"`` -> True, ``"play"`` -> False; anything else raises ``ValueError``."""
    if word == "skip":
        return True
    if word == "play":
        return False
    raise ValueError(f"unknown event type {word!r}; expected 'play' or 'skip'")


def level_is_skip(level: int) -> bool:
    """Whether a skip level counts as a skip (MSSD's ``skip_2``)."""
    if level not in SKIP_LEVELS:
        raise ValueError(f"skip level must be one of {SKIP_LEVELS}, got {level!r}")
    return level <= SKIP_MAX_LEVEL


def level_from_play_time(played_ms: float, duration_ms: float) -> int:
    """The skip level of a track heard for ``played_ms`` of its ``duration_ms``."""
    if not (duration_ms > 0 and played_ms >= 0):
        raise ValueError("need duration_ms > 0 and played_ms >= 0")
    fraction = played_ms / duration_ms
    for level, limit in enumerate(LEVEL_FRACTIONS):
        if fraction < limit:
            return level
    return SKIP_LEVELS[-1]


def parse_timestamp(value: float | int | str) -> float:
    """Unix seconds (a number or its text) or ISO-8601 (naive = UTC) -> unix seconds.

    Raises ``ValueError`` saying what is wrong: not a time, not finite, or outside
    ``0 .. MAX_TIMESTAMP`` (a milliseconds value, most likely).
    """
    if isinstance(value, bool):
        raise ValueError("must be unix seconds (a number) or an ISO-8601 string")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_ISO_LENGTH:
            raise ValueError(
                f"ISO-8601 timestamp longer than {MAX_ISO_LENGTH} characters"
            )
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    else:
        raise ValueError("must be unix seconds (a number) or an ISO-8601 string")
    if not (math.isfinite(seconds) and 0.0 <= seconds < MAX_TIMESTAMP):
        raise ValueError(f"must be unix seconds between 0 and {MAX_TIMESTAMP:.0e}")
    return seconds


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One accepted event as the service keeps it."""

    event_id: str  # "" when the client sent none
    user_id: str
    track_id: str
    skipped: bool
    timestamp: float  # unix seconds
    level: int | None = None  # the skip level, when the client sent one

    def __post_init__(self) -> None:
        if self.level is not None and level_is_skip(self.level) != self.skipped:
            raise ValueError(
                f"skip level {self.level} contradicts "
                f"{event_type(self.skipped)!r} (a skip is level <= {SKIP_MAX_LEVEL})"
            )

    @property
    def code(self) -> str:
        """Its one-character code: the level's digit, else ``p``/``s``."""
        if self.level is not None:
            return str(self.level)
        return STORED_SKIP if self.skipped else STORED_PLAY

    def encode(self) -> str:
        """The stored-event string (a list entry, without the user id)."""
        return FIELD_SEPARATOR.join(
            (self.event_id, self.track_id, self.code, _seconds(self))
        )

    @classmethod
    def decode(cls, user_id: str, raw: str) -> StoredEvent:
        event_id, track_id, code, timestamp = raw.split(FIELD_SEPARATOR)
        skipped, level = parse_code(code)
        return cls(event_id, user_id, track_id, skipped, float(timestamp), level)

    def stream_line(self) -> str:
        """This event as one line of a stream entry (with the user id)."""
        return FIELD_SEPARATOR.join(
            (
                self.event_id,
                self.user_id,
                self.track_id,
                self.code,
                _seconds(self),
            )
        )

    @classmethod
    def from_stream_line(cls, line: str) -> StoredEvent:
        event_id, user_id, track_id, code, stamp = line.split(FIELD_SEPARATOR)
        skipped, level = parse_code(code)
        return cls(event_id, user_id, track_id, skipped, float(stamp), level)


def event_log_row(
    user_id: str,
    track_id: str,
    skipped: bool,
    timestamp: float,
    level: int | None = None,
) -> tuple[str, str, str, str, str]:
    """One row of the event log (``EVENT_LOG_HEADER``); the time round-trips."""
    grade = "" if level is None else str(level)
    return user_id, track_id, event_type(skipped), format_timestamp(timestamp), grade


def format_timestamp(timestamp: float) -> str:
    # Whole seconds print as integers; otherwise repr() round-trips the float exactly.
    return str(int(timestamp)) if float(timestamp).is_integer() else repr(timestamp)


def parse_code(code: str) -> tuple[bool, int | None]:
    """A stored event's one-character code -> ``(skipped, level or None)``."""
    if code == STORED_SKIP:
        return True, None
    if code == STORED_PLAY:
        return False, None
    if code.isdigit() and int(code) in SKIP_LEVELS:
        return level_is_skip(int(code)), int(code)
    raise ValueError(
        f"unknown stored event code {code!r}; expected 'p', 's' or a skip level"
    )


def _seconds(event: StoredEvent) -> str:
    return f"{event.timestamp:.3f}"
