"""benchmarks/online_check.py: its statistics by hand (the live run itself is in
docs/RESULTS.md: it needs two trained bundles and minutes of replay)."""

from __future__ import annotations

import math

import pytest

from benchmarks.online_check import cluster_standard_error, indicators


def test_cluster_standard_error_by_hand():
    # Two sessions of two lists: all hits, then none. p = 1/2; residuals y_i - p n_i
    # are +1 and -1; sqrt(2/1 * 2) / 4 = 0.5, twice the binomial sqrt(.25 / 4).
    se = cluster_standard_error([True, True, False, False], [0, 0, 1, 1])
    assert se == pytest.approx(0.5)
    # Independent-looking sessions (one list each) give the binomial-like value
    # with the m/(m-1) correction: sqrt(2 * (0.25 + 0.25)) / 2.
    assert cluster_standard_error([True, False], [0, 1]) == pytest.approx(0.5)
    assert cluster_standard_error([True], [0]) == math.inf


def test_indicators_split_hits_by_play_and_skip():
    ranks = [0.0, 9.0, 10.0, math.inf]
    skipped = [False, True, False, True]
    assert indicators(ranks, skipped, k=10) == {
        "hit": [True, True, False, False],
        "hit_played": [True, False, False, False],
        "hit_skipped": [False, True, False, False],
    }
