"""Baselines on a tiny hand-made dataset whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from skiprec.encoding import FEEDBACK_PLAY, FEEDBACK_SKIP
from skiprec.vocab import OOV_ID, Vocabulary
from training.baselines import (
    BASELINES,
    CooccurrenceScorer,
    MarkovScorer,
    PopularityScorer,
    fit_baseline,
)
from training.data import Session
from training.splits import build_vocab

P, S = FEEDBACK_PLAY, FEEDBACK_SKIP

# "a" is the most popular track; after "b" comes "c" when played, "d" when skipped.
SESSIONS = [
    Session("1", ("a", "b", "c"), (False, False, False)),
    Session("2", ("a", "b", "c"), (False, False, False)),
    Session("3", ("b", "d", "a"), (False, True, False)),
    Session("4", ("b", "d", "a", "a"), (False, True, False, False)),
    Session("5", ("a", "e"), (False, False)),
]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return build_vocab(SESSIONS)


def top(scores: np.ndarray, vocab: Vocabulary) -> list[str]:
    """Real tracks of one score row, best first."""
    order = np.argsort(-scores[3:], kind="stable") + 3
    return [vocab.track_id(int(i)) for i in order]


def test_popularity_ranks_by_training_count(vocab: Vocabulary) -> None:
    scorer = PopularityScorer.fit(SESSIONS, vocab)
    scores = scorer.score([[(vocab.index("c"), P)], [(OOV_ID, S)]])
    assert scores.shape == (2, vocab.size)
    np.testing.assert_array_equal(scores[0], scores[1])
    assert top(scores[0], vocab)[:2] == ["a", "b"]


def test_markov_predicts_memorised_transition(vocab: Vocabulary) -> None:
    scorer = MarkovScorer.fit(SESSIONS, vocab)
    scores = scorer.score([[(vocab.index("e"), P), (vocab.index("b"), P)]])
    # b -> c twice, b -> d twice: tie broken by popularity (c and d both 2 plays).
    assert set(top(scores[0], vocab)[:2]) == {"c", "d"}
    scores = scorer.score([[(vocab.index("a"), P)]])
    assert top(scores[0], vocab)[0] == "b"  # a -> b twice, a -> a once, a -> e once


def test_markov_backs_off_to_popularity_for_unseen_last_track(
    vocab: Vocabulary,
) -> None:
    markov = MarkovScorer.fit(SESSIONS, vocab)
    popular = PopularityScorer.fit(SESSIONS, vocab)
    unseen = markov.score([[(OOV_ID, P)]])[0]
    assert top(unseen, vocab) == top(popular.score([[(OOV_ID, P)]])[0], vocab)
    never_followed = markov.score([[(vocab.index("e"), P)]])[0]  # e ends a session
    assert top(never_followed, vocab) == top(unseen, vocab)


def test_markov_played_ignores_transitions_into_skips(vocab: Vocabulary) -> None:
    scorer = MarkovScorer.fit(SESSIONS, vocab, played_only=True)
    scores = scorer.score([[(vocab.index("b"), P)]])[0]
    assert top(scores, vocab)[0] == "c"
    assert scores[vocab.index("d")] < 1.0  # only the popularity back-off


def test_cooccurrence_uses_whole_history_with_recency(vocab: Vocabulary) -> None:
    scorer = CooccurrenceScorer.fit(SESSIONS, vocab, window=2)
    # e only co-occurs with a; a recent e outweighs an older b.
    scores = scorer.score([[(vocab.index("b"), P), (vocab.index("e"), P)]])[0]
    assert top(scores, vocab)[0] == "a"
    scores = scorer.score([[(vocab.index("e"), P), (vocab.index("b"), P)]])[0]
    assert top(scores, vocab)[0] in {"c", "d", "a"}
    assert scores[vocab.index("c")] > scores[vocab.index("e")]


def test_cooccurrence_skip_weight_discounts_skipped_history(vocab: Vocabulary) -> None:
    scorer = CooccurrenceScorer.fit(
        SESSIONS, vocab, window=1, decay=1.0, skip_weight=0.0
    )
    history = [(vocab.index("e"), P), (vocab.index("c"), S)]
    with_skip = scorer.score([history])[0]
    only_played = scorer.score([history[:1]])[0]
    np.testing.assert_allclose(with_skip, only_played)


def test_fit_baseline_names(vocab: Vocabulary) -> None:
    for name in BASELINES:
        scores = fit_baseline(name, SESSIONS, vocab).score([[(vocab.index("a"), P)]])
        assert scores.shape == (1, vocab.size)
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baseline("random", SESSIONS, vocab)
