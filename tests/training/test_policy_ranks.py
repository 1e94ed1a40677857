"""Several policies in one pass, per-example metrics, the previous-event split, and
the per-example facts (session ids, previous event) that paired tests need."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest

from skiprec.encoding import FEEDBACK_PLAY, FEEDBACK_SKIP
from skiprec.policy import SessionPolicy
from skiprec.vocab import NUM_SPECIAL, OOV_ID, Vocabulary
from training.baselines import CooccurrenceScorer, MarkovScorer
from training.evaluation import (
    LogScores,
    SkipScorer,
    _sample_candidates,
    apply_policy,
    encode_examples,
    evaluate,
    policy_ranks,
    previous_skipped,
    rank_examples,
    session_ids,
    skip_probabilities,
)
from training.metrics import (
    hit_per_example,
    mrr_per_example,
    ndcg_per_example,
    ranks_from_scores,
    summarize,
)
from training.splits import (
    EvalExample,
    Split,
    leave_one_out_split,
    session_disjoint_split,
    session_examples,
)

POLICIES = [
    SessionPolicy(),
    SessionPolicy(skipped="none"),
    SessionPolicy(skipped="none", played="exclude"),
    SessionPolicy(skipped="exclude", played="exclude"),
    SessionPolicy("penalize", "penalize", 0.5, 2.0),
    SessionPolicy("penalize", "none", 1.0, 0.0),
    SessionPolicy("exclude", "penalize", 0.0, 0.25),
    SessionPolicy("penalize", "exclude", 3.0, 0.0),
]


def legacy_ranks(scores, histories, targets, policy):
    """What evaluate did before several policies shared one pass."""
    adjusted = np.array(scores, dtype=np.float64)
    apply_policy(adjusted, histories, policy)
    return ranks_from_scores(adjusted, targets)


def test_policy_ranks_equal_apply_policy_then_rank() -> None:
    rng = np.random.default_rng(0)
    num_rows, size = 60, 12
    scores = rng.integers(0, 5, (num_rows, size)).astype(np.float64)  # many ties
    scores[:, :NUM_SPECIAL] = -np.inf
    scores[rng.random((num_rows, size)) < 0.05] = -np.inf
    histories = [
        [
            (
                int(rng.integers(0, size)),
                int(rng.choice([FEEDBACK_PLAY, FEEDBACK_SKIP])),
            )
            for _ in range(int(rng.integers(1, 8)))
        ]
        for _ in range(num_rows)
    ]
    targets = rng.integers(-1, size, num_rows)
    for row in range(0, num_rows, 3):  # a third of the targets heard earlier
        targets[row] = histories[row][0][0]
    ranks, excluded = policy_ranks(scores, histories, targets, POLICIES)
    assert ranks.shape == excluded.shape == (len(POLICIES), num_rows)
    for p, policy in enumerate(POLICIES):
        np.testing.assert_array_equal(
            ranks[p], legacy_ranks(scores, histories, targets, policy)
        )
        adjusted = scores.copy()
        apply_policy(adjusted, histories, policy)
        known = targets >= 0
        expected = np.zeros(num_rows, dtype=bool)
        expected[known] = np.isneginf(adjusted[np.flatnonzero(known), targets[known]])
        np.testing.assert_array_equal(excluded[p], expected)


def legacy_evaluate(scorer, examples, vocab, policy, sampled_negatives=None, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(examples), 512):
        batch = examples[start : start + 512]
        histories, targets = encode_examples(batch, vocab)
        targets[targets == OOV_ID] = -1
        scores = np.array(scorer.score(histories), dtype=np.float64)
        scores[:, :NUM_SPECIAL] = -np.inf
        apply_policy(scores, histories, policy)
        if sampled_negatives is None:
            out.append(ranks_from_scores(scores, targets))
            continue
        known = targets >= 0
        safe = np.where(known, targets, NUM_SPECIAL)
        negatives = _sample_candidates(rng, safe, vocab.num_tracks, sampled_negatives)
        candidates = np.concatenate([safe[:, None], negatives], axis=1)
        picked = np.take_along_axis(scores, candidates, axis=1)
        out.append(ranks_from_scores(picked, np.where(known, 0, -1)))
    return np.concatenate(out)


@pytest.mark.parametrize("sampled", [None, 7])
def test_rank_examples_equals_one_policy_at_a_time(
    synthetic_split: Split, synthetic_vocab: Vocabulary, sampled: int | None
) -> None:
    scorer = CooccurrenceScorer.fit(synthetic_split.train, synthetic_vocab)
    examples = synthetic_split.test[:700]
    ranked = rank_examples(
        scorer, examples, synthetic_vocab, POLICIES, sampled_negatives=sampled
    )
    for p, policy in enumerate(POLICIES):
        expected = legacy_evaluate(scorer, examples, synthetic_vocab, policy, sampled)
        np.testing.assert_array_equal(ranked.ranks[p], expected)
        single = evaluate(
            scorer, examples, synthetic_vocab, policy, sampled_negatives=sampled
        )
        assert single["ndcg@10"] == pytest.approx(
            float(ndcg_per_example(expected, 10).mean()), abs=0, rel=0
        )
        assert single["num_excluded_targets"] == ranked.excluded[p].sum()


def test_log_scores_keep_the_ranking(
    synthetic_split: Split, synthetic_vocab: Vocabulary
) -> None:
    markov = MarkovScorer.fit(synthetic_split.train, synthetic_vocab)
    examples = synthetic_split.test[:300]
    none = SessionPolicy(skipped="none")
    for policy in (none, SessionPolicy()):
        assert evaluate(LogScores(markov), examples, synthetic_vocab, policy) == (
            evaluate(markov, examples, synthetic_vocab, policy)
        )


def test_per_example_metrics_hand_computed() -> None:
    ranks = np.array([0.0, 2.0, 9.0, 10.0, math.inf])
    assert hit_per_example(ranks, 10).tolist() == [1, 1, 1, 0, 0]
    np.testing.assert_allclose(
        ndcg_per_example(ranks, 10), [1.0, 0.5, 1 / math.log2(11), 0.0, 0.0]
    )
    np.testing.assert_allclose(mrr_per_example(ranks, 10), [1.0, 1 / 3, 0.1, 0, 0])


def test_summarize_splits_by_the_previous_event() -> None:
    ranks = np.array([0.0, 2.0, math.inf, 1.0, 0.0])
    skipped = np.array([False, True, False, True, True])
    previous = np.array([False, False, True, True, True])
    out = summarize(ranks, skipped, previous_skipped=previous)
    plain = summarize(ranks, skipped)
    assert {k: out[k] for k in plain} == plain  # the old keys are unchanged
    assert out["after_play/num_examples"] == 2 and out["after_skip/num_examples"] == 3
    assert out["after_play/played/ndcg@10"] == 1.0
    assert out["after_play/skipped/ndcg@10"] == 0.5
    assert out["after_play/ndcg_gap@10"] == 0.5
    assert out["after_skip/played/ndcg@10"] == 0.0  # the miss
    assert out["after_skip/skipped/ndcg@10"] == pytest.approx(
        (1 / math.log2(3) + 1) / 2
    )
    assert out["after_skip/num_skipped"] == 2
    with pytest.raises(ValueError, match="previous_skipped"):
        summarize(ranks, skipped, previous_skipped=previous[:2])


def test_evaluate_reports_the_previous_event_split() -> None:
    vocab = Vocabulary(("a", "b", "c"))

    class Fixed:
        def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
            return np.tile([0, 0, 0, 3.0, 2.0, 1.0], (len(histories), 1))

    examples = [
        EvalExample((("c", False),), "a", False),  # after a play: rank 0
        EvalExample((("c", True),), "b", False),  # after a skip: rank 1
    ]
    out = evaluate(Fixed(), examples, vocab, SessionPolicy(skipped="none"))
    assert out["after_play/ndcg@10"] == 1.0
    assert out["after_skip/ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_session_ids_follow_sessions(synthetic_sessions) -> None:
    held_out = synthetic_sessions[:40]
    examples = [e for s in held_out for e in session_examples(s)]
    expected = [n for n, s in enumerate(held_out) for _ in range(len(s) - 1)]
    assert session_ids(examples).tolist() == expected
    split = session_disjoint_split(synthetic_sessions, seed=0)
    ids = session_ids(split.test)
    assert ids[0] == 0 and (np.diff(ids) >= 0).all()
    assert ids.max() + 1 == round(len(synthetic_sessions) * 0.1)
    loo = leave_one_out_split(synthetic_sessions[:30])
    assert session_ids(loo.test).tolist() == list(range(len(loo.test)))


def test_previous_skipped_is_the_last_history_event() -> None:
    examples = [
        EvalExample((("a", True), ("b", False)), "c", True),
        EvalExample((("a", False), ("b", True)), "c", False),
    ]
    assert previous_skipped(examples).tolist() == [False, True]


def test_skip_probabilities_ask_a_skip_scorer_in_batches() -> None:
    vocab = Vocabulary(("a", "b"))

    class Skips:
        def __init__(self) -> None:
            self.calls: list[list[int]] = []

        def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
            return np.zeros((len(histories), vocab.size))

        def p_skip(
            self, histories: Sequence[Sequence[tuple[int, int]]], targets: np.ndarray
        ) -> np.ndarray:
            self.calls.append(targets.tolist())
            return np.where(targets == OOV_ID, 0.5, 0.1 * targets)

    examples = [
        EvalExample((("a", False),), target, False) for target in ("a", "b", "zz")
    ]
    scorer = Skips()
    assert isinstance(scorer, SkipScorer)
    assert not isinstance(MarkovScorer.fit([], vocab), SkipScorer)
    p = skip_probabilities(scorer, examples, vocab, batch_size=2)
    np.testing.assert_allclose(p, [0.3, 0.4, 0.5])
    assert scorer.calls == [[3, 4], [OOV_ID]]


def test_policy_ranks_with_many_policies_is_exhaustive() -> None:
    # Every exclude/penalize/none combination on one row with the target heard
    # earlier both skipped and played.
    scores = np.array([[-np.inf] * 3 + [5.0, 4.0, 3.0, 2.0]])
    history = [[(5, FEEDBACK_SKIP), (5, FEEDBACK_PLAY), (3, FEEDBACK_SKIP)]]
    rules = ("exclude", "penalize", "none")
    policies = [
        SessionPolicy(s, p, 1.5, 0.75) for s, p in itertools.product(rules, rules)
    ]
    ranks, _ = policy_ranks(scores, history, np.array([5]), policies)
    for p, policy in enumerate(policies):
        assert ranks[p, 0] == legacy_ranks(scores, history, np.array([5]), policy)[0]
