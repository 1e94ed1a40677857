"""Track vocabulary: string track ids <-> dense model indices, with reserved specials.

Torch-free: the service, the exporter and the trainer all read the same ``vocab.json``.
Index 0 is padding, 1 stands for any track the model never saw (OOV), 2 is the
BERT4Rec mask token; real tracks start at ``NUM_SPECIAL``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PAD_ID = 0
OOV_ID = 1
MASK_ID = 2
NUM_SPECIAL = 3
SPECIAL_IDS: Mapping[str, int] = {"pad": PAD_ID, "oov": OOV_ID, "mask": MASK_ID}


@dataclass(frozen=True)
class Vocabulary:
    """Maps track ids (strings on the wire) to indices ``NUM_SPECIAL..size-1``."""

    track_ids: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {track_id: i + NUM_SPECIAL for i, track_id in enumerate(self.track_ids)}
        if len(index) != len(self.track_ids):
            raise ValueError("vocabulary track ids must be unique")
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(cls, track_ids: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Most frequent first (ties by id) so index order is deterministic."""
        counts = Counter(track_ids)
        kept = [t for t, c in counts.items() if c >= min_count]
        kept.sort(key=lambda t: (-counts[t], t))
        return cls(tuple(kept))

    @property
    def size(self) -> int:
        """V: number of rows of the item table, specials included."""
        return len(self.track_ids) + NUM_SPECIAL

    @property
    def num_tracks(self) -> int:
        return len(self.track_ids)

    def index(self, track_id: str) -> int:
        return self._index.get(track_id, OOV_ID)

    def indices(self, track_ids: Iterable[str]) -> list[int]:
        get = self._index.get
        return [get(t, OOV_ID) for t in track_ids]

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._index

    def track_id(self, index: int) -> str:
        """The track id at a real-track index; raises for specials and out of range."""
        if not NUM_SPECIAL <= index < self.size:
            raise IndexError(f"index {index} is not a real track (0..{self.size - 1})")
        return self.track_ids[index - NUM_SPECIAL]

    def to_json(self) -> dict[str, object]:
        return {
            "special_ids": dict(SPECIAL_IDS),
            "first_track_index": NUM_SPECIAL,
            "track_ids": list(self.track_ids),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, object]) -> Vocabulary:
        if payload.get("special_ids") != dict(SPECIAL_IDS):
            raise ValueError(
                f"vocabulary special ids {payload.get('special_ids')!r} differ from "
                f"this version's {dict(SPECIAL_IDS)!r}"
            )
        track_ids = payload.get("track_ids")
        if not isinstance(track_ids, list) or not all(
            isinstance(t, str) for t in track_ids
        ):
            raise ValueError("vocabulary 'track_ids' must be a list of strings")
        return cls(tuple(track_ids))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls.from_json(json.loads(path.read_text()))
