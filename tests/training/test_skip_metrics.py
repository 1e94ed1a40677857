"""Skip-prediction metrics and momentum baselines on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import Session
from training.skip_baselines import (
    PRIOR_STRENGTH,
    MomentumLogistic,
    PreviousSkipBaseline,
    TrackSkipRateBaseline,
    TrackSkipRates,
    example_features,
    fit_logistic,
    training_features,
)
from training.skip_metrics import (
    auc,
    auc_difference,
    calibration,
    log_loss,
    pairwise_auc,
    pairwise_auc_difference,
    skip_report,
    weighted_auc,
)
from training.splits import session_examples


def session(tracks: str, skips: str, name: str = "s") -> Session:
    """``session("abc", "PSS")``: tracks a, b, c played, skipped, skipped."""
    return Session(name, tuple(tracks), tuple(c == "S" for c in skips))


def test_auc_hand_computed() -> None:
    # Pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, .) two wins: 3/4.
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75


def test_auc_ties_count_one_half() -> None:
    assert auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0])) == 0.5
    # (1.0 vs 0.5) win, (0.5 vs 0.5) tie: (1 + 1/2) / 2.
    assert auc(np.array([1.0, 0.5, 0.5]), np.array([1, 1, 0])) == 0.75
    assert auc(np.array([2.0, 1.0]), np.array([0, 1])) == 0.0


def test_auc_without_both_classes_is_nan() -> None:
    assert math.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert math.isnan(auc(np.zeros(0), np.zeros(0)))


def test_auc_rejects_nan_scores() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([np.nan, 0.2]), np.array([1, 0]))


def test_weighted_auc_equals_repeating_examples() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, 30).astype(float)  # many ties
    labels = rng.random(30) < 0.4
    weights = rng.integers(0, 3, (5, 30))
    out = weighted_auc(scores, labels, weights)
    for row, w in zip(out, weights, strict=True):
        repeated = np.repeat(np.arange(30), w)
        assert row == pytest.approx(auc(scores[repeated], labels[repeated]))


def test_log_loss_hand_computed() -> None:
    out = log_loss(np.array([0.8, 0.4]), np.array([1, 0]))
    assert out == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # Clipped: a confident miss costs -log(eps), not infinity.
    assert math.isfinite(log_loss(np.array([0.0]), np.array([1])))


def test_calibration_hand_computed() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    y = np.array([0, 1, 0, 1, 1])
    cal = calibration(p, y)
    # bin 0: |0 - .05|, bin 1: |.5 - .15| (2 examples), bin 9: |1 - .975| (2).
    assert cal.ece == pytest.approx((0.05 + 2 * 0.35 + 2 * 0.025) / 5)
    assert len(cal.bins) == 10
    assert [b.count for b in cal.bins] == [1, 1 * 2, 0, 0, 0, 0, 0, 0, 0, 2]
    last = cal.bins[-1]
    assert (last.lower, last.upper, last.mean_probability, last.skip_rate) == (
        pytest.approx(0.9),
        1.0,
        pytest.approx(0.975),
        1.0,
    )
    assert math.isnan(cal.bins[4].mean_probability)
    assert calibration(np.array([0.3, 0.3]), np.array([1, 0])).ece == pytest.approx(0.2)


# Session 0 after a play: (0.9 skipped, 0.2 played) -> 1 pair, a win.
# Session 0 after a skip: (0.1 skipped, 0.5 played) -> 1 pair, a loss.
# Session 1 after a play: (0.3 skipped; 0.3 and 0.8 played) -> 2 pairs: a tie, a loss.
PAIRWISE = {
    "scores": np.array([0.9, 0.2, 0.5, 0.1, 0.3, 0.3, 0.8]),
    "labels": np.array([1, 0, 0, 1, 1, 0, 0]),
    "session_ids": np.array([0, 0, 0, 0, 1, 1, 1]),
    "previous_skipped": np.array([0, 0, 1, 1, 0, 0, 0]),
}


def test_pairwise_auc_only_pairs_one_session_and_previous_event() -> None:
    out = pairwise_auc(**PAIRWISE)
    assert out.num_pairs == 4
    assert out.auc == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    # The plain AUC pairs across sessions and previous events too: 12 pairs, the
    # skipped 0.9 winning 4, 0.1 none, 0.3 one and a tie.
    assert auc(PAIRWISE["scores"], PAIRWISE["labels"]) == pytest.approx(5.5 / 12)


def test_pairwise_auc_ignores_what_is_constant_within_a_session() -> None:
    # Adding a per-session (session mood) or per-previous-event offset changes the
    # plain AUC but not the pairwise one.
    shifted = PAIRWISE["scores"] + 10 * PAIRWISE["session_ids"]
    shifted = shifted + 5 * PAIRWISE["previous_skipped"]
    assert pairwise_auc(**{**PAIRWISE, "scores": shifted}) == pairwise_auc(**PAIRWISE)
    assert auc(shifted, PAIRWISE["labels"]) != auc(
        PAIRWISE["scores"], PAIRWISE["labels"]
    )


def test_pairwise_auc_without_pairs_is_nan() -> None:
    out = pairwise_auc(np.array([0.1, 0.2]), np.array([1, 0]), np.array([0, 1]), [0, 0])
    assert out.num_pairs == 0 and math.isnan(out.auc)


def test_differences_of_a_predictor_with_itself_are_zero() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.5
    sessions = np.repeat(np.arange(20), 10)
    previous = rng.random(200) < 0.5
    p = rng.random(200)
    same = auc_difference(p, p, labels, sessions, num_resamples=100)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    pair = pairwise_auc_difference(p, p, labels, sessions, previous, 100)
    assert (pair.difference, pair.low, pair.high) == (0.0, 0.0, 0.0)


def test_auc_difference_of_an_informative_predictor_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(600) < 0.4
    sessions = np.repeat(np.arange(60), 10)
    previous = rng.random(600) < 0.5
    good = labels + rng.normal(0, 0.5, 600)
    noise = rng.random(600)
    out = auc_difference(good, noise, labels, sessions, num_resamples=200)
    assert out.difference == pytest.approx(auc(good, labels) - auc(noise, labels))
    assert out.low > 0 and out.excludes_zero
    pair = pairwise_auc_difference(good, noise, labels, sessions, previous, 200)
    assert pair.low > 0


def test_fit_logistic_recovers_group_rates() -> None:
    # One binary feature: the MLE reproduces each group's rate (3/10 and 8/10).
    x = np.repeat([0.0, 1.0], 10)[:, None]
    y = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2)
    w = fit_logistic(x, y, l2=0.0)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert w[0] == pytest.approx(logit(0.3), abs=1e-6)
    assert w[1] == pytest.approx(logit(0.8) - logit(0.3), abs=1e-6)


def test_fit_logistic_stays_finite_on_separable_data() -> None:
    x = np.array([[-1.0], [-0.5], [0.5], [1.0]])
    w = fit_logistic(x, np.array([0, 0, 1, 1]), l2=1e-3)
    assert np.isfinite(w).all() and w[1] > 0


def test_track_skip_rates_shrink_and_leave_one_out() -> None:
    rates = TrackSkipRates.fit([session("aab", "SPS"), session("b", "P")])
    assert rates.global_rate == 0.5
    prior = PRIOR_STRENGTH * 0.5
    assert rates.rate("a") == pytest.approx((1 + prior) / (2 + PRIOR_STRENGTH))
    assert rates.rate("zzz") == pytest.approx(0.5)
    # b: 1 skip in 2 events; leaving out its skipped event leaves 0 in 1.
    assert rates.rate("b", leave_out=True) == pytest.approx(
        prior / (1 + PRIOR_STRENGTH)
    )


def test_training_and_example_features_hand_computed() -> None:
    sessions = [session("abc", "PSS")]
    rates = TrackSkipRates.fit(sessions)
    features, labels = training_features(sessions, rates)
    assert labels.tolist() == [True, True]
    assert features.previous_skipped.tolist() == [0.0, 1.0]
    assert features.skip_fraction.tolist() == [0.0, 0.5]
    assert features.log_position == pytest.approx(np.log1p([1, 2]))
    # b and c each appear once, skipped: leaving that event out leaves the prior.
    assert features.track_rate == pytest.approx([2 / 3, 2 / 3])
    held_out = example_features(session_examples(session("abc", "PSS")), rates)
    assert held_out.previous_skipped.tolist() == [0.0, 1.0]
    prior = PRIOR_STRENGTH * 2 / 3
    assert held_out.track_rate == pytest.approx(
        [(1 + prior) / (1 + PRIOR_STRENGTH)] * 2
    )


def test_previous_skip_and_track_rate_baselines() -> None:
    train = [session("abc", "PSS"), session("de", "SP")]
    # Training examples: after a play -> skip; after skips -> skip, play.
    base = PreviousSkipBaseline.fit(train)
    assert (base.after_play, base.after_skip) == (1.0, 0.5)
    examples = session_examples(session("xab", "SPP"))
    assert base.predict(examples).tolist() == [0.5, 1.0]
    # Global rate 3/5; a: 0 skips in 1 event, b: 1 in 1.
    prior = PRIOR_STRENGTH * 0.6
    track = TrackSkipRateBaseline.fit(train).predict(examples)
    assert track == pytest.approx(
        [prior / (1 + PRIOR_STRENGTH), (1 + prior) / (1 + PRIOR_STRENGTH)]
    )


def momentum_sessions(count: int, seed: int) -> list[Session]:
    """Skips as a two-state chain: P(skip | skip) = 0.8, P(skip | play) = 0.2."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        skipped = [bool(rng.random() < 0.5)]
        for _ in range(int(rng.integers(2, 12))):
            skipped.append(bool(rng.random() < (0.8 if skipped[-1] else 0.2)))
        tracks = tuple(f"t{i}" for i in rng.integers(0, 30, len(skipped)))
        out.append(Session(f"s{n}", tracks, tuple(skipped)))
    return out


def test_momentum_logistic_learns_momentum() -> None:
    model = MomentumLogistic.fit(momentum_sessions(400, seed=0))
    examples = [e for s in momentum_sessions(200, seed=1) for e in session_examples(s)]
    p = model.predict(examples)
    labels = np.array([e.target_skipped for e in examples])
    assert ((p > 0) & (p < 1)).all()
    assert auc(p, labels) > 0.75
    assert model.coefficients()["previous_skipped"] > 0
    previous = PreviousSkipBaseline.fit(momentum_sessions(400, seed=0))
    assert previous.after_skip == pytest.approx(0.8, abs=0.05)
    assert previous.after_play == pytest.approx(0.2, abs=0.05)
    assert set(model.coefficients()) == {
        "intercept",
        "previous_skipped",
        "skip_fraction",
        "track_rate",
        "log_position",
    }


def test_skip_report_keys() -> None:
    out = skip_report(
        PAIRWISE["scores"],
        PAIRWISE["labels"],
        PAIRWISE["session_ids"],
        PAIRWISE["previous_skipped"],
    )
    assert out["pairwise_auc"] == pytest.approx(0.375)
    assert out["num_examples"] == 7 and out["num_pairs"] == 4
    assert out["auc"] == pytest.approx(5.5 / 12)
    assert len(out["reliability"]) == 10
    for key in ("log_loss", "ece", "brier", "auc_after_play", "auc_after_skip"):
        assert key in out
