"""Momentum baselines for skip prediction, all fitted on training-split sessions only.

- ``PreviousSkipBaseline``: P(skip | the previous event was skipped), two rates;
- ``TrackSkipRateBaseline``: the next track's training skip rate, shrunk towards the
  global rate (``PRIOR_STRENGTH`` pseudo-events);
- ``MomentumLogistic``: a logistic regression (Newton-IRLS, ``fit_logistic``) on the
  previous event skipped, the session's skip fraction so far, the track's skip rate
  (leave-one-out on the training examples, so a rare track's own outcome does not leak
  into its feature) and log(1 + position).

Each ``predict(examples)`` gives P(skip) of every example's actual next track, for
the metrics of ``training.skip_metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.data import Session
from training.splits import EvalExample

PRIOR_STRENGTH = 10.0  # pseudo-events at the global skip rate behind each track's rate


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return out


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    l2: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> np.ndarray:
    """Logistic regression by Newton-IRLS; float [F + 1] (intercept first).

    Minimises ``mean log loss + l2 / 2 * |w|^2`` (the intercept unpenalised) with a
    halving line search, so a step never increases the objective.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"features [N, F] and labels [N], got {x.shape}, {y.shape}")
    design = np.hstack([np.ones((x.shape[0], 1)), x])  # [N, F + 1]
    ridge = np.full(design.shape[1], l2)
    ridge[0] = 0.0

    def objective(w: np.ndarray) -> float:
        z = design @ w
        loss = np.logaddexp(0.0, z) - y * z
        return float(loss.mean() + 0.5 * (ridge * w * w).sum())

    weights = np.zeros(design.shape[1])
    current = objective(weights)
    for _ in range(max_iter):
        p = _sigmoid(design @ weights)
        gradient = design.T @ (p - y) / len(y) + ridge * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design / len(y)
        hessian += np.diag(ridge + 1e-12)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-8:
            candidate = weights - scale * step
            value = objective(candidate)
            if value <= current:
                break
            scale /= 2
        else:
            break
        weights, current = candidate, value
        if np.abs(scale * step).max() < tol:
            break
    return weights


@dataclass(frozen=True)
class TrackSkipRates:
    """Skip counts per track and overall, from training sessions."""

    skips: dict[str, int]
    events: dict[str, int]
    global_rate: float

    @classmethod
    def fit(cls, sessions: Sequence[Session]) -> TrackSkipRates:
        skips: dict[str, int] = {}
        events: dict[str, int] = {}
        for session in sessions:
            for track, skipped in zip(session.track_ids, session.skipped, strict=True):
                events[track] = events.get(track, 0) + 1
                skips[track] = skips.get(track, 0) + bool(skipped)
        total = sum(events.values())
        return cls(skips, events, sum(skips.values()) / total if total else 0.5)

    def rate(self, track: str, leave_out: bool | None = None) -> float:
        """Shrunk skip rate of ``track`` (the global rate for an unknown one);
        ``leave_out`` removes one event of that outcome (the example's own)."""
        skips = self.skips.get(track, 0)
        events = self.events.get(track, 0)
        if leave_out is not None and events:
            skips -= bool(leave_out)
            events -= 1
        prior = PRIOR_STRENGTH * self.global_rate
        return (skips + prior) / (events + PRIOR_STRENGTH)


@dataclass(frozen=True)
class MomentumFeatures:
    """Per-example momentum features, float [N] each."""

    previous_skipped: np.ndarray
    skip_fraction: np.ndarray  # of the history so far
    track_rate: np.ndarray  # the next track's training skip rate
    log_position: np.ndarray  # log(1 + number of earlier events)

    def matrix(self) -> np.ndarray:
        return np.stack(
            [
                self.previous_skipped,
                self.skip_fraction,
                self.track_rate,
                self.log_position,
            ],
            axis=1,
        )


FEATURE_NAMES = ("previous_skipped", "skip_fraction", "track_rate", "log_position")


def example_features(
    examples: Sequence[EvalExample], rates: TrackSkipRates
) -> MomentumFeatures:
    """Momentum features of held-out examples (track rates from training)."""
    return MomentumFeatures(
        previous_skipped=np.array(
            [float(e.history[-1][1]) for e in examples], dtype=np.float64
        ),
        skip_fraction=np.array(
            [sum(s for _, s in e.history) / len(e.history) for e in examples],
            dtype=np.float64,
        ),
        track_rate=np.array([rates.rate(e.target) for e in examples]),
        log_position=np.log1p(np.array([len(e.history) for e in examples], float)),
    )


def training_features(
    sessions: Sequence[Session], rates: TrackSkipRates
) -> tuple[MomentumFeatures, np.ndarray]:
    """Features and labels of every position ``t >= 1`` of training sessions, the
    track rate leaving the example's own event out."""
    previous, fraction, track_rate, position, labels = [], [], [], [], []
    for session in sessions:
        skipped = np.asarray(session.skipped, dtype=np.float64)
        if skipped.size < 2:
            continue
        t = np.arange(1, skipped.size)
        previous.append(skipped[:-1])
        fraction.append(np.cumsum(skipped)[:-1] / t)
        position.append(np.log1p(t.astype(np.float64)))
        labels.append(skipped[1:])
        track_rate.append(
            np.array(
                [
                    rates.rate(session.track_ids[i], leave_out=bool(session.skipped[i]))
                    for i in t
                ]
            )
        )
    if not labels:
        raise ValueError("no training examples: every session has fewer than 2 events")
    features = MomentumFeatures(
        np.concatenate(previous),
        np.concatenate(fraction),
        np.concatenate(track_rate),
        np.concatenate(position),
    )
    return features, np.concatenate(labels).astype(bool)


@dataclass(frozen=True)
class PreviousSkipBaseline:
    """P(skip) = the training rate after a skip, or after a play."""

    after_play: float
    after_skip: float

    @classmethod
    def fit(cls, sessions: Sequence[Session]) -> PreviousSkipBaseline:
        rates = TrackSkipRates.fit(sessions)
        features, labels = training_features(sessions, rates)
        after = features.previous_skipped.astype(bool)

        def rate(group: np.ndarray) -> float:
            return float(labels[group].mean()) if group.any() else rates.global_rate

        return cls(after_play=rate(~after), after_skip=rate(after))

    def predict(self, examples: Sequence[EvalExample]) -> np.ndarray:
        return np.array(
            [self.after_skip if e.history[-1][1] else self.after_play for e in examples]
        )


@dataclass(frozen=True)
class TrackSkipRateBaseline:
    """P(skip) = the next track's shrunk training skip rate."""

    rates: TrackSkipRates

    @classmethod
    def fit(cls, sessions: Sequence[Session]) -> TrackSkipRateBaseline:
        return cls(TrackSkipRates.fit(sessions))

    def predict(self, examples: Sequence[EvalExample]) -> np.ndarray:
        return np.array([self.rates.rate(e.target) for e in examples])


@dataclass(frozen=True)
class MomentumLogistic:
    """Logistic regression on the momentum features (standardised on training)."""

    rates: TrackSkipRates
    mean: np.ndarray  # [F]
    scale: np.ndarray  # [F]
    weights: np.ndarray  # [F + 1], intercept first, on standardised features

    @classmethod
    def fit(cls, sessions: Sequence[Session]) -> MomentumLogistic:
        rates = TrackSkipRates.fit(sessions)
        features, labels = training_features(sessions, rates)
        x = features.matrix()
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0
        return cls(rates, mean, scale, fit_logistic((x - mean) / scale, labels))

    def predict(self, examples: Sequence[EvalExample]) -> np.ndarray:
        x = (example_features(examples, self.rates).matrix() - self.mean) / self.scale
        return _sigmoid(self.weights[0] + x @ self.weights[1:])

    def coefficients(self) -> dict[str, float]:
        """The weights per standardised feature, and the intercept."""
        names = ("intercept", *FEATURE_NAMES)
        return {n: float(w) for n, w in zip(names, self.weights, strict=True)}


SKIP_BASELINES = ("previous_skipped", "track_skip_rate", "momentum_logistic")
