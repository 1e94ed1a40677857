"""Evaluation harness: encoding, exclusion policy, OOV targets, sampled ranking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from skiprec.encoding import FEEDBACK_PLAY, FEEDBACK_SKIP, encode_events
from skiprec.policy import SessionPolicy
from skiprec.vocab import OOV_ID, Vocabulary
from training.baselines import PopularityScorer
from training.evaluation import evaluate
from training.splits import EvalExample, Split

VOCAB = Vocabulary(("a", "b", "c", "d", "e"))  # indices 3..7


class FixedScorer:
    """The same scores for every history; remembers what it was asked."""

    def __init__(self, row: Sequence[float]) -> None:
        self.row = np.asarray(row, dtype=np.float64)
        self.calls: list[list[list[tuple[int, int]]]] = []

    def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        self.calls.append([list(h) for h in histories])
        return np.tile(self.row, (len(histories), 1))


# Specials score highest, so they would win if the harness ranked them.
ROW = [99.0, 99.0, 99.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # a > b > c > d > e


def example(history: list[tuple[str, bool]], target: str, skipped: bool = False):
    return EvalExample(tuple(history), target, skipped)


def test_encode_events_maps_oov_and_feedback() -> None:
    encoded = encode_events([("a", False), ("zzz", True)], VOCAB)
    assert encoded == [(3, FEEDBACK_PLAY), (OOV_ID, FEEDBACK_SKIP)]


def test_evaluate_ranks_without_specials() -> None:
    scorer = FixedScorer(ROW)
    out = evaluate(
        scorer, [example([("e", False)], "a"), example([("e", False)], "c")], VOCAB
    )
    assert out["hr@1"] == 0.5  # a is rank 0, c is rank 2
    assert out["hr@5"] == 1.0
    assert out["num_examples"] == 2
    assert scorer.calls == [[[(7, FEEDBACK_PLAY)], [(7, FEEDBACK_PLAY)]]]


def test_evaluate_excludes_skipped_history_tracks() -> None:
    examples = [example([("a", True), ("b", False)], "c")]
    skips = SessionPolicy(skipped="exclude")
    excluded = evaluate(FixedScorer(ROW), examples, VOCAB, skips)
    assert excluded["hr@1"] == 0.0 and excluded["hr@5"] == 1.0  # b above c, a out
    assert excluded["mrr@10"] == pytest.approx(1 / 2)
    both = SessionPolicy(skipped="exclude", played="exclude")
    assert evaluate(FixedScorer(ROW), examples, VOCAB, both)["hr@1"] == 1.0
    none = evaluate(FixedScorer(ROW), examples, VOCAB)  # the default: no rule
    assert none["mrr@10"] == pytest.approx(1 / 3)


def test_excluded_or_oov_target_is_a_miss() -> None:
    examples = [
        example([("a", True)], "a", skipped=True),  # skipped earlier: excluded
        example([("a", False)], "unknown"),  # not in the vocabulary
        example([("a", False)], "a"),  # a replay of a played track is allowed
    ]
    out = evaluate(FixedScorer(ROW), examples, VOCAB, SessionPolicy(skipped="exclude"))
    assert out["hr@20"] == pytest.approx(1 / 3)
    assert out["num_excluded_targets"] == 1
    assert out["num_oov_targets"] == 1
    assert (out["num_played"], out["num_skipped"]) == (2, 1)
    assert out["skipped/hr@20"] == 0.0


def test_evaluate_is_independent_of_batch_size(
    synthetic_split: Split, synthetic_vocab: Vocabulary
) -> None:
    scorer = PopularityScorer.fit(synthetic_split.train, synthetic_vocab)
    examples = synthetic_split.test[:300]
    for sampled in (None, 50):
        big = evaluate(scorer, examples, synthetic_vocab, sampled_negatives=sampled)
        small = evaluate(
            scorer, examples, synthetic_vocab, batch_size=7, sampled_negatives=sampled
        )
        assert big == small


def test_sampled_ranking_is_seeded_and_easier_than_full(
    synthetic_split: Split, synthetic_vocab: Vocabulary
) -> None:
    scorer = PopularityScorer.fit(synthetic_split.train, synthetic_vocab)
    examples = synthetic_split.test
    full = evaluate(scorer, examples, synthetic_vocab)
    sampled = evaluate(scorer, examples, synthetic_vocab, sampled_negatives=19, seed=1)
    assert sampled == evaluate(
        scorer, examples, synthetic_vocab, sampled_negatives=19, seed=1
    )
    assert sampled != evaluate(
        scorer, examples, synthetic_vocab, sampled_negatives=19, seed=2
    )
    assert sampled["hr@10"] > full["hr@10"]
    # 19 negatives + the target: every rankable target is in the top 20.
    unrankable = sampled["num_oov_targets"] + sampled["num_excluded_targets"]
    assert sampled["hr@20"] == pytest.approx(1.0 - unrankable / len(examples))


def test_sampled_negatives_never_include_the_target() -> None:
    # Target "e" scores lowest; with every other track sampled it ranks last (4).
    examples = [example([("a", False)], "e")] * 20
    out = evaluate(FixedScorer(ROW), examples, VOCAB, sampled_negatives=4)
    assert out["hr@5"] == 1.0 and out["hr@1"] == 0.0
    assert out["mrr@10"] == pytest.approx(1 / 5)
    # More negatives than tracks: capped at the catalogue, same result.
    assert evaluate(FixedScorer(ROW), examples, VOCAB, sampled_negatives=1000) == out


def test_evaluate_rejects_wrong_score_shape() -> None:
    with pytest.raises(ValueError, match="scorer returned"):
        evaluate(FixedScorer(ROW[:-1]), [example([("a", False)], "b")], VOCAB)


def test_evaluate_rejects_empty_history() -> None:
    with pytest.raises(ValueError, match="non-empty history"):
        evaluate(FixedScorer(ROW), [example([], "b")], VOCAB)
