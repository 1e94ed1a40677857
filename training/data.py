"""Session data: the in-memory form every loader produces.

(Loaders, format detection and error reporting are filled in by the data work; the
``Session`` dataclass and the ``load_sessions`` signature are the interface the rest
of training relies on.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Session:
    """One listening session, oldest event first."""

    session_id: str
    track_ids: tuple[str, ...]
    skips: tuple[bool, ...]  # True = skipped (MSSD skip_2), False = played
    timestamps: tuple[float, ...] | None = None  # unix seconds, when the source has them

    def __len__(self) -> int:
        return len(self.track_ids)


def load_sessions(path: Path, format: str | None = None) -> list[Session]:
    """Load sessions from a file; format detected from its columns unless given."""
    raise NotImplementedError
