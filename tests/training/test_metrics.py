"""Ranking metrics on hand-computed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import hit_rate, mrr, ndcg, ranks_from_scores, summarize

INF = math.inf


def test_metrics_hand_computed_ranks() -> None:
    ranks = np.array([0.0, 2.0, INF])
    assert hit_rate(ranks, 1) == pytest.approx(1 / 3)
    assert hit_rate(ranks, 3) == pytest.approx(2 / 3)
    assert hit_rate(ranks, 2) == pytest.approx(1 / 3)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert ndcg(ranks, 2) == pytest.approx(1 / 3)
    assert mrr(ranks, 10) == pytest.approx((1 + 1 / 3) / 3)


def test_metrics_empty_ranks_are_zero() -> None:
    empty = np.zeros(0)
    assert hit_rate(empty, 10) == 0.0
    assert ndcg(empty, 10) == 0.0
    assert mrr(empty, 10) == 0.0


def test_ranks_from_scores_counts_items_above_target() -> None:
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.3],
            [0.1, 0.9, 0.5, 0.3],
            [0.4, 0.2, 0.8, 0.6],
        ]
    )
    ranks = ranks_from_scores(scores, np.array([1, 0, 3]))
    np.testing.assert_array_equal(ranks, [0, 3, 1])


def test_ranks_from_scores_ties_count_against_target() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert ranks_from_scores(scores, np.array([0]))[0] == 2


def test_ranks_from_scores_unrankable_targets_are_inf() -> None:
    scores = np.array([[0.5, -np.inf, 0.2], [0.5, 0.1, 0.2]])
    ranks = ranks_from_scores(scores, np.array([1, -1]))
    assert np.isinf(ranks).all()


def test_ranks_from_scores_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="targets"):
        ranks_from_scores(np.zeros((2, 3)), np.zeros(3, dtype=np.int64))


def test_summarize_splits_played_and_skipped() -> None:
    ranks = np.array([0.0, 2.0, INF, 1.0])
    skipped = np.array([False, False, True, True])
    out = summarize(ranks, skipped)
    for key in ("hr@1", "hr@5", "hr@10", "hr@20", "ndcg@10", "ndcg@20", "mrr@10"):
        assert key in out and f"played/{key}" in out and f"skipped/{key}" in out
    assert out["hr@1"] == pytest.approx(1 / 4)
    assert out["played/ndcg@10"] == pytest.approx((1 + 0.5) / 2)
    assert out["skipped/ndcg@10"] == pytest.approx((1 / math.log2(3)) / 2)
    assert out["skip_mrr@10"] == pytest.approx(0.5 / 2)
    assert out["ndcg_gap@10"] == pytest.approx(
        out["played/ndcg@10"] - out["skipped/ndcg@10"]
    )
    assert (out["num_examples"], out["num_played"], out["num_skipped"]) == (4, 2, 2)


def test_summarize_without_skipped_targets_reports_zero_count() -> None:
    out = summarize(np.array([0.0]), np.array([False]))
    assert out["num_skipped"] == 0
    assert out["skip_mrr@10"] == 0.0
    assert out["played/hr@1"] == 1.0
