"""The session cut: where one listening session ends and the next begins.

A listener's events, in the order they were accepted (the event log: in time
order), form one session until two consecutive events are more than ``gap_s``
seconds apart; the event after such a gap opens a new session. Live, the current
session is over (empty) once its last event is more than ``gap_s`` before now.
A later event with an earlier timestamp (a client clock going back) is never a gap.

Training sessionises the event log with ``session_starts``; serving cuts the current
session with ``current_session_start`` here and in ``service/lua/read_session.lua``
(the only other copy, under an equality test), in the same double arithmetic.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SESSION_GAP_S = 30 * 60.0


def is_gap(earlier: float, later: float, gap_s: float) -> bool:
    """Whether a session ends between two consecutive events."""
    return later - earlier > gap_s


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
