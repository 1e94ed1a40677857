"""Every Redis key the service uses, built in one place.

Per-user keys carry the user id as a ``{hash tag}`` so that all of one user's keys
hash to the same Redis Cluster slot and a single Lua script may touch them together.
User ids are restricted to ``[A-Za-z0-9._:@-]`` at the HTTP boundary, so they can
never contain the braces that would break the tag.
"""

from __future__ import annotations

KEY_PREFIX = "skiprec:"
STREAM_KEY = KEY_PREFIX + "stream:events"
"""The global live event log (a bounded Redis Stream); one slot on a Cluster."""
# "{STREAM_KEY}..." hashes to STREAM_KEY's own slot, so the log's keys share one.
_LOG_TAG = "{" + STREAM_KEY + "}"
LOG_SEQ_KEY = _LOG_TAG + ":seq"
"""Counter: the sequence number of the last event appended to the log."""


def log_cursor_key(reader: str) -> str:
    """Hash: a log reader's position (last entry id and sequence number)."""
    return f"{_LOG_TAG}:cursor:{reader}"


def user_tag(user_id: str) -> str:
    return "{" + user_id + "}"


def session_events_key(user_id: str) -> str:
    """List of the user's most recent events, oldest first (RPUSH + LTRIM)."""
    return f"{KEY_PREFIX}{user_tag(user_id)}:events"


def dedup_key(user_id: str) -> str:
    """Sorted set: event id -> receive time (:func:`dedup_score`), for idempotent
    retries."""
    return f"{KEY_PREFIX}{user_tag(user_id)}:dedup"


def dedup_score(unix_s: float) -> int:
    """A time as a dedup set's score: integer microseconds, which Redis reads
    without parsing (``lua/append_events.lua``); below 2**53, so exact as a Lua
    number."""
    return round(unix_s * 1_000_000)


def served_key(user_id: str) -> str:
    """List of the lists recently served to the user, newest first (LPUSH + LTRIM):
    each waits for the listener's next event (``service/lua/keep_served.lua``)."""
    return f"{KEY_PREFIX}{user_tag(user_id)}:served"


def user_keys(user_id: str) -> tuple[str, str, str]:
    """All per-user keys (a reset deletes them); the append script takes the first
    two, in this order."""
    return session_events_key(user_id), dedup_key(user_id), served_key(user_id)


# The experiment counters of every worker and replica, in one slot of their own.
_OUTCOMES_TAG = "{" + KEY_PREFIX + "outcomes}"
OUTCOME_COUNTS_KEY = _OUTCOMES_TAG + ":counts"
"""Hash: ``variant|model_version|counter`` -> count (``service.outcomes``)."""
COUNTED_KEY = _OUTCOMES_TAG + ":counted"
"""Sorted set: request id -> count time of each outcome counted (counted once)."""
