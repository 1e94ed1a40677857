"""Paired session bootstrap on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.stats import (
    paired_bootstrap,
    percentile_interval,
    resample_counts,
    session_index,
)


def test_point_estimate_is_the_mean_difference_and_ratio() -> None:
    a = np.array([1.0, 0.0, 1.0, 1.0])
    b = np.array([0.0, 0.0, 1.0, 0.0])
    out = paired_bootstrap(a, b, np.array([0, 0, 1, 1]), num_resamples=200)
    assert out.difference == pytest.approx(0.75 - 0.25)
    assert out.ratio == pytest.approx(3.0)
    assert (out.num_examples, out.num_sessions, out.num_resamples) == (4, 2, 200)
    assert out.low <= out.difference <= out.high


def test_two_sessions_give_the_three_resample_values() -> None:
    # One example per session, differences 0 and 1: a resample is {0,0}, {0,1} or
    # {1,1}, i.e. 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4. The 2.5% and 97.5%
    # percentiles fall in the end masses: exactly 0 and 1.
    out = paired_bootstrap(np.array([0.0, 1.0]), np.zeros(2), np.array(["x", "y"]))
    assert out.difference == 0.5
    assert (out.low, out.high) == (0.0, 1.0)
    assert out.excludes_zero is False


def test_sessions_are_resampled_whole_and_weigh_by_size() -> None:
    # Session A: 3 examples, difference 1 each; session B: 1 example, difference 0.
    # Resamples: AA -> 1, AB/BA -> 3/4, BB -> 0; an example-level bootstrap would
    # give 16 more values in between.
    a = np.array([1.0, 1.0, 1.0, 0.0])
    sessions = np.array([7, 7, 7, 9])
    out = paired_bootstrap(a, np.zeros(4), sessions, num_resamples=2000, seed=3)
    assert out.difference == pytest.approx(0.75)
    assert (out.low, out.high) == (0.0, 1.0)
    values = set()
    for counts in resample_counts(2, 2000, seed=3):
        drawn = counts @ np.array([3.0, 0.0]) / (counts @ np.array([3.0, 1.0]))
        values |= set(np.round(drawn, 12).tolist())
    assert values == {0.0, 0.75, 1.0}


def test_constant_difference_has_a_zero_width_interval() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(50)
    out = paired_bootstrap(b + 0.25, b, rng.integers(0, 10, 50))
    assert out.difference == pytest.approx(0.25)
    assert out.low == pytest.approx(0.25) and out.high == pytest.approx(0.25)
    assert out.excludes_zero


def test_bootstrap_matches_explicit_session_resampling() -> None:
    rng = np.random.default_rng(1)
    sessions = np.repeat(np.arange(6), [1, 4, 2, 3, 5, 1])
    a, b = rng.random(sessions.size), rng.random(sessions.size)
    out = paired_bootstrap(a, b, sessions, num_resamples=300, seed=5)
    explicit = []
    for counts in resample_counts(6, 300, seed=5):
        for row in counts:
            picked = np.concatenate(
                [np.flatnonzero(sessions == s) for s in range(6) for _ in range(row[s])]
            )
            explicit.append(a[picked].mean() - b[picked].mean())
    assert (out.low, out.high) == pytest.approx(percentile_interval(explicit))


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(2)
    a, b, s = rng.random(200), rng.random(200), rng.integers(0, 40, 200)
    first = paired_bootstrap(a, b, s, seed=11)
    assert paired_bootstrap(a, b, s, seed=11) == first
    assert paired_bootstrap(a, b, s, seed=12) != first


def test_resample_counts_draw_every_session_count_times() -> None:
    chunks = list(resample_counts(1_500_000, 3, seed=0))  # forces one row per chunk
    assert [c.shape for c in chunks] == [(1, 1_500_000)] * 2 + [(1, 1_500_000)]
    assert all(int(c.sum()) == 1_500_000 for c in chunks)
    small = np.concatenate(list(resample_counts(4, 1000, seed=0)))
    assert small.shape == (1000, 4)
    assert (small.sum(axis=1) == 4).all()
    assert small.mean() == pytest.approx(1.0, abs=0.05)


def test_percentile_interval_and_session_index() -> None:
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.arange(101.0), level=0.5) == pytest.approx((25, 75))
    low, high = percentile_interval(np.array([np.nan]))
    assert np.isnan(low) and np.isnan(high)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.arange(3.0), level=1.0)
    index, count = session_index(np.array(["b", "a", "b"]))
    assert index.tolist() == [1, 0, 1] and count == 2


def test_paired_bootstrap_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap(np.zeros(0), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="resample"):
        list(resample_counts(3, 0))
