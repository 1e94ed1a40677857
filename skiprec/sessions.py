"""The session cut: where one listening session ends and the next begins.

A listener's events, ordered by their timestamps (``time_order``: ties keep the
order they arrived in), form one session until two consecutive events are more than
``gap_s`` seconds apart; the event after such a gap opens a new session. Live, the
current session is over (empty) once its last event is more than ``gap_s`` before now.

Training sorts the event log with ``time_order`` and sessionises it with
``session_starts``; serving keeps each listener's events in that order as they
arrive (``service/lua/append_events.lua`` inserts a late event before newer ones)
and cuts the current session with ``current_session_start`` here and in
``service/lua/read_session.lua``. The Lua scripts are the only other copy, under
equality tests, in the same double arithmetic. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SESSION_GAP_S = 30 * 60.0


def is_gap(earlier: float, later: float, gap_s: float) -> bool:
    """Whether a session ends between two consecutive events."""
    return later - earlier > gap_s


def time_order(timestamps: Sequence[float]) -> list[int]:
    """Positions of the events in time order; equal times keep arrival order."""
    return sorted(range(len(timestamps)), key=timestamps.__getitem__)


def session_starts(timestamps: Sequence[float], gap_s: float) -> list[int]:
    """Indices where a session starts (always 0 for a non-empty log)."""
    if not timestamps:
        return []
    return [0] + [
        i
        for i in range(1, len(timestamps))
        if is_gap(timestamps[i - 1], timestamps[i], gap_s)
    ]


def current_session_start(timestamps: Sequence[float], gap_s: float, now: float) -> int:
    """Index of the current session's first event; ``len(timestamps)`` when none."""
    if not timestamps or is_gap(timestamps[-1], now, gap_s):
        return len(timestamps)
    for i in range(len(timestamps) - 1, 0, -1):
        if is_gap(timestamps[i - 1], timestamps[i], gap_s):
            return i
    return 0
