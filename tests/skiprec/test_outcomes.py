"""skiprec.outcomes: attribution, tallies and intervals against hand-computed values."""

from __future__ import annotations

import math

import pytest

from skiprec.outcomes import (
    Outcome,
    Tally,
    attribute,
    difference,
    summarize,
    tally,
    tally_ranks,
    wilson,
)


def test_attribute_finds_the_rank_or_a_miss():
    served = ("a", "b", "c")
    assert attribute(served, "c", skipped=True) == Outcome(2, True)
    assert attribute(served, "z", skipped=False) == Outcome(None, False)


def test_tally_and_cutoffs_by_hand():
    outcomes = [
        Outcome(0, False),  # hit@1, played
        Outcome(4, True),  # hit@5, skipped
        Outcome(9, False),  # hit@10, played
        Outcome(None, True),  # miss, skipped
        Outcome(None, False),  # miss, played
    ]
    counts = tally(outcomes)
    assert (counts.lists, counts.played, counts.skipped) == (5, 3, 2)
    assert [counts.hits_within(k) for k in (1, 5, 10)] == [1, 2, 3]
    assert counts.hits_within(10, skipped=False) == 2
    assert counts.hits_within(10, skipped=True) == 1
    rates = summarize(counts, k=5)
    assert rates["hit"].value == pytest.approx(2 / 5)
    assert rates["hit_played"].value == pytest.approx(1 / 5)
    assert rates["hit_skipped"].value == pytest.approx(1 / 5)
    assert rates["next_skipped"].value == pytest.approx(2 / 5)


def test_offline_ranks_tally_like_outcomes():
    ranks = [0.0, 4.0, 9.0, math.inf, math.inf]
    skipped = [False, True, False, True, False]
    assert tally_ranks(ranks, skipped) == tally(
        [
            Outcome(0, False),
            Outcome(4, True),
            Outcome(9, False),
            Outcome(None, True),
            Outcome(None, False),
        ]
    )
    assert tally_ranks([1.0], [False]) + tally_ranks([1.0], [True]) == Tally(
        1, 1, {(1, False): 1, (1, True): 1}
    )


def test_wilson_interval_by_hand():
    # 5/10 at z = 1.96: centre (0.5 + 1.92/10) / 1.384 = 0.5,
    # half 1.96 * sqrt(0.025 + 3.84/400) / 1.384 = 0.2634.
    rate = wilson(5, 10)
    assert rate.value == 0.5
    assert (rate.low, rate.high) == (
        pytest.approx(0.2366, abs=1e-4),
        pytest.approx(0.7634, abs=1e-4),
    )
    # 0/10: the interval starts at 0 and reaches 3.84 / 13.84 = 0.2775.
    zero = wilson(0, 10)
    assert (zero.low, zero.high) == (0.0, pytest.approx(0.2775, abs=1e-4))
    empty = wilson(0, 0)
    assert (empty.value, empty.low, empty.high) == (None, 0.0, 1.0)


def test_difference_is_newcombes_hybrid_score_interval():
    # Newcombe (1998), Table II example (a): 56/70 - 48/80 = 0.2,
    # method 10 gives 0.0524 to 0.3339.
    d = difference(wilson(56, 70), wilson(48, 80))
    assert d.value == pytest.approx(0.2)
    assert d.low == pytest.approx(0.0524, abs=1e-4)
    assert d.high == pytest.approx(0.3339, abs=1e-4)
    assert difference(wilson(1, 2), wilson(0, 0)).value is None
