"""The exclusion policy: which tracks of the current session may not come back.

Serving applies it to the live session (``service/recommend.py``) and offline
evaluation to every history (``training/evaluation.py``), so an offline figure is
the figure of the policy the service runs. Torch-free.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class ExclusionPolicy:
    """Tracks heard earlier in the session that are never recommended again."""

    exclude_skipped: bool = True
    exclude_played: bool = False

    def excludes(self, skipped: bool) -> bool:
        """Whether an earlier event with this feedback removes its track."""
        return self.exclude_skipped if skipped else self.exclude_played

    def excluded(self, events: Iterable[tuple[K, bool]]) -> set[K]:
        """The distinct tracks of ``(track, skipped)`` events the policy removes."""
        return {track for track, skipped in events if self.excludes(skipped)}
