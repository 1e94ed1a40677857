"""Session encoding: a listener's events -> the model's integer inputs.

This is the single definition used by training (batches for evaluation and parity),
export (parity sessions) and serving (live sessions from Redis). Torch-free on purpose.

Layout of one encoded session of length T (``T <= max_seq_len``), oldest first:
    item_ids[t]  track index (vocabulary), PAD_ID on the left padding
    feedback[t]  FEEDBACK_CODES value of that event
Sessions longer than the model's window keep their most recent events ("left"
truncation); shorter ones are left-padded so the position read out is always T-1.
BERT4Rec-style models read the output at an appended mask token instead of at the
last event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from skiprec.events import SKIP_LEVELS, SKIP_MAX_LEVEL, level_is_skip
from skiprec.vocab import MASK_ID, PAD_ID, Vocabulary

FEEDBACK_PAD = 0
FEEDBACK_PLAY = 1  # played, grade unknown (a client that sends only play/skip)
FEEDBACK_SKIP = 2  # skipped, grade unknown
FEEDBACK_MASK = 3
FEEDBACK_LEVEL_BASE = 4  # graded events: code = FEEDBACK_LEVEL_BASE + skip level
BINARY_FEEDBACK_CODES: Mapping[str, int] = {
    "pad": FEEDBACK_PAD,
    "play": FEEDBACK_PLAY,
    "skip": FEEDBACK_SKIP,
    "mask": FEEDBACK_MASK,
}
FEEDBACK_CODES: Mapping[str, int] = {
    **BINARY_FEEDBACK_CODES,
    **{f"level{level}": FEEDBACK_LEVEL_BASE + level for level in SKIP_LEVELS},
}
NUM_FEEDBACK_CODES = len(FEEDBACK_CODES)


def feedback_code(skipped: bool, level: int | None = None, graded: bool = True) -> int:
    """The model's input code of an event: its skip level's code when it has one
    (and the model reads grades: ``graded``), else played (False) / skipped (True)."""
    if level is not None and graded:
        return FEEDBACK_LEVEL_BASE + level
    return FEEDBACK_SKIP if skipped else FEEDBACK_PLAY


def encode_events(
    events: Iterable[tuple[str, bool]], vocab: Vocabulary
) -> list[tuple[int, int]]:
    """``(track_id, skipped)`` events -> ``(item_index, feedback_code)`` (OOV kept)."""
    pairs = list(events)
    indices = vocab.indices(track for track, _ in pairs)
    return [
        (index, feedback_code(skipped))
        for index, (_, skipped) in zip(indices, pairs, strict=True)
    ]


def encode_graded_events(
    events: Iterable[tuple[str, bool]],
    levels: Sequence[int | None] | None,
    vocab: Vocabulary,
    graded: bool = True,
) -> list[tuple[int, int]]:
    """``encode_events`` with each event's skip level, when it has one.

    ``levels`` is per event (``None`` = no grade for that event), or ``None`` for a
    session without grades, which encodes exactly as ``encode_events``. A level that
    contradicts its event's ``skipped`` raises ``ValueError``. ``graded=False`` (a
    model without grades) gives the binary codes.
    """
    pairs = list(events)
    grades = list(levels) if levels is not None else [None] * len(pairs)
    if len(grades) != len(pairs):
        raise ValueError(f"{len(grades)} skip levels for {len(pairs)} events")
    indices = vocab.indices(track for track, _ in pairs)
    encoded = []
    for index, (_, skipped), level in zip(indices, pairs, grades, strict=True):
        if level is not None and level_is_skip(level) != skipped:
            raise ValueError(
                f"skip level {level} contradicts skipped={skipped} "
                f"(a skip is a level <= {SKIP_MAX_LEVEL})"
            )
        encoded.append((index, feedback_code(skipped, level, graded)))
    return encoded


def is_skip_code(code: int) -> bool:
    """Whether an event's feedback code says it was skipped (binary or graded)."""
    if code >= FEEDBACK_LEVEL_BASE:
        return level_is_skip(code - FEEDBACK_LEVEL_BASE)
    return code == FEEDBACK_SKIP


def binary_code(code: int) -> int:
    """A feedback code as a client without grades would send it: a level code
    becomes play/skip; pad, play, skip and mask are unchanged."""
    if code >= FEEDBACK_LEVEL_BASE:
        return FEEDBACK_SKIP if is_skip_code(code) else FEEDBACK_PLAY
    return code


@dataclass(frozen=True)
class EncodingSpec:
    """Everything the encoder needs; serialised into the bundle manifest."""

    max_seq_len: int
    append_mask: bool = False
    truncation: str = "left"
    padding: str = "left"
    feedback_codes: Mapping[str, int] = field(
        default_factory=lambda: dict(BINARY_FEEDBACK_CODES)
    )

    @classmethod
    def for_model(
        cls, backbone: str, max_seq_len: int, graded: bool = False
    ) -> EncodingSpec:
        """A model's serving encoding: its window, a final mask for BERT4Rec, and the
        graded feedback codes when the model embeds skip levels."""
        codes = FEEDBACK_CODES if graded else BINARY_FEEDBACK_CODES
        return cls(
            max_seq_len=max_seq_len,
            append_mask=backbone == "bert4rec",
            feedback_codes=dict(codes),
        )

    @property
    def graded(self) -> bool:
        """Whether the model reads skip levels (bundles before grades do not)."""
        return "level0" in self.feedback_codes

    def __post_init__(self) -> None:
        if self.max_seq_len < 1:
            raise ValueError("max_seq_len must be >= 1")
        if self.truncation != "left" or self.padding != "left":
            raise ValueError("only left truncation and left padding are defined")
        if dict(self.feedback_codes) not in (
            dict(FEEDBACK_CODES),
            dict(BINARY_FEEDBACK_CODES),
        ):
            raise ValueError(
                f"feedback codes {dict(self.feedback_codes)!r} are neither "
                f"{dict(FEEDBACK_CODES)!r} nor the binary "
                f"{dict(BINARY_FEEDBACK_CODES)!r}"
            )


Session = Sequence[tuple[int, int]]
"""One session as ``(item_index, feedback_code)`` pairs, oldest first."""


def encode_sessions(
    sessions: Sequence[Session], spec: EncodingSpec, seq_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Encode sessions as left-padded ``item_ids`` and ``feedback``, both int64 [B, T].

    Args:
        sessions: per session, its ``(item_index, feedback_code)`` events, oldest first.
        spec: the bundle's encoding spec.
        seq_len: T; default the longest encoded session in the batch (at least 1).
    """
    tails: list[list[tuple[int, int]]] = []
    for events in sessions:
        tail = list(events)
        if spec.append_mask:
            tail.append((MASK_ID, FEEDBACK_MASK))
        tails.append(tail[-spec.max_seq_len :])
    width = seq_len if seq_len is not None else max([1, *map(len, tails)])
    if not 1 <= width <= spec.max_seq_len:
        raise ValueError(f"seq_len must be in 1..{spec.max_seq_len}, got {width}")
    item_ids = np.full((len(tails), width), PAD_ID, dtype=np.int64)
    feedback = np.full((len(tails), width), FEEDBACK_PAD, dtype=np.int64)
    for row, tail in enumerate(tails):
        tail = tail[-width:]
        if tail:
            item_ids[row, width - len(tail) :] = [item for item, _ in tail]
            feedback[row, width - len(tail) :] = [code for _, code in tail]
    return item_ids, feedback


def encode_exclusions(
    excluded: Sequence[Sequence[int]], width: int | None = None
) -> np.ndarray:
    """Per-session item ids never to recommend, PAD-filled to int64 [B, E] (E >= 1)."""
    width = width if width is not None else max([1, *map(len, excluded)])
    out = np.full((len(excluded), width), PAD_ID, dtype=np.int64)
    for row, items in enumerate(excluded):
        items = list(items)[:width]
        out[row, : len(items)] = items
    return out
