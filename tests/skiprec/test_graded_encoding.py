"""Graded events -> feedback codes (``encode_graded_events``, ``binary_code``)."""

from __future__ import annotations

import pytest

from skiprec.encoding import (
    FEEDBACK_CODES,
    FEEDBACK_MASK,
    FEEDBACK_PAD,
    FEEDBACK_PLAY,
    FEEDBACK_SKIP,
    binary_code,
    encode_events,
    encode_graded_events,
)
from skiprec.vocab import OOV_ID, Vocabulary

VOCAB = Vocabulary(("a", "b", "c"))  # a=3, b=4, c=5
EVENTS = [("a", True), ("b", False), ("zzz", True), ("c", False)]


def test_graded_events_get_their_level_codes() -> None:
    encoded = encode_graded_events(EVENTS, (0, 2, 1, None), VOCAB)
    assert encoded == [
        (3, FEEDBACK_CODES["level0"]),
        (4, FEEDBACK_CODES["level2"]),
        (OOV_ID, FEEDBACK_CODES["level1"]),
        (5, FEEDBACK_PLAY),  # no grade for this event: play/skip
    ]


def test_no_levels_or_a_binary_model_encode_as_encode_events() -> None:
    assert encode_graded_events(EVENTS, None, VOCAB) == encode_events(EVENTS, VOCAB)
    binary = encode_graded_events(EVENTS, (0, 3, 1, 2), VOCAB, graded=False)
    assert binary == encode_events(EVENTS, VOCAB)


def test_graded_events_refuse_contradictions_and_length_mismatch() -> None:
    with pytest.raises(ValueError, match="skip level 3 contradicts skipped=True"):
        encode_graded_events([("a", True)], (3,), VOCAB)
    with pytest.raises(ValueError, match="1 skip levels for 2 events"):
        encode_graded_events(EVENTS[:2], (0,), VOCAB)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (FEEDBACK_CODES["level0"], FEEDBACK_SKIP),
        (FEEDBACK_CODES["level1"], FEEDBACK_SKIP),
        (FEEDBACK_CODES["level2"], FEEDBACK_PLAY),
        (FEEDBACK_CODES["level3"], FEEDBACK_PLAY),
        (FEEDBACK_PAD, FEEDBACK_PAD),
        (FEEDBACK_PLAY, FEEDBACK_PLAY),
        (FEEDBACK_SKIP, FEEDBACK_SKIP),
        (FEEDBACK_MASK, FEEDBACK_MASK),
    ],
)
def test_binary_code_coarsens_levels_only(code: int, expected: int) -> None:
    assert binary_code(code) == expected
