"""Skip prediction on the actual next track: the metrics.

A skip predictor gives, for each example, P(the listener skips the track that was in
fact served next). The metrics are pure functions of (probabilities [N], labels [N],
session ids [N], previous-event skip flags [N]), so any predictor plugs in: the
baselines below, or a model's skip head through ``training.evaluation.SkipScorer``.

- ``auc``: the Mann-Whitney AUC, P(score of a skipped example > score of a played
  one), ties counting one half.
- ``log_loss``: mean negative log-likelihood (probabilities clipped to [eps, 1-eps]).
- ``calibration``: expected calibration error over equal-width bins,
  ``ECE = sum_b n_b / N * |mean(label)_b - mean(p)_b|``, and the reliability table.
- ``pairwise_auc``: the AUC over pairs of examples of the *same session* with the
  *same previous event* (both after a play or both after a skip) and different
  outcomes. Session mood and the previous event, which a predictor can read but a
  ranking cannot use (they are equal for every candidate of one request), cancel
  within such a pair, so this isolates the candidate-specific part of a predictor:
  the only part that can reorder a recommendation list.

The momentum baselines these are compared with are in ``training.skip_baselines``.
``auc_difference`` and ``pairwise_auc_difference`` give paired session-bootstrap
intervals (``training.stats``) for comparing two predictors on the same examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from training.stats import (
    LEVEL,
    NUM_RESAMPLES,
    PairedDifference,
    percentile_interval,
    resample_counts,
    session_index,
)

NUM_BINS = 10
LOG_LOSS_EPS = 1e-7
# Weighted-AUC resamples evaluated at once: [rows, N] float arrays.
_AUC_CHUNK_CELLS = 4_000_000


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores [N] and labels [N], got {s.shape}, {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y


def _tie_groups(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts of runs of equal values in a sorted array, and each element's run."""
    if sorted_values.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    new = np.empty(sorted_values.size, dtype=bool)
    new[0] = True
    new[1:] = sorted_values[1:] != sorted_values[:-1]
    return np.flatnonzero(new), np.cumsum(new) - 1


def weighted_auc(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Mann-Whitney AUC with example weights, one AUC per weight row.

    ``weights`` float [R, N] (an integer weight = the example repeated that often);
    returns float [R], NaN where a row has no positive or no negative weight.
    """
    s, y = _check(scores, labels)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != s.size:
        raise ValueError(f"weights [R, {s.size}], got {w.shape}")
    order = np.argsort(s, kind="stable")
    starts, _ = _tie_groups(s[order])
    if starts.size == 0:
        return np.full(w.shape[0], np.nan)
    w_sorted = w[:, order]  # [R, N]
    positive = np.add.reduceat(w_sorted * y[order], starts, axis=1)  # [R, G]
    negative = np.add.reduceat(w_sorted * ~y[order], starts, axis=1)  # [R, G]
    below = np.cumsum(negative, axis=1) - negative  # negatives scoring lower
    u = (positive * (below + 0.5 * negative)).sum(axis=1)
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, u / pairs, np.nan)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(equal); NaN if a class
    is absent."""
    s, _ = _check(scores, labels)
    return float(weighted_auc(scores, labels, np.ones((1, s.size)))[0])


def log_loss(
    probabilities: np.ndarray, labels: np.ndarray, eps: float = LOG_LOSS_EPS
) -> float:
    """Mean ``-[y log p + (1 - y) log(1 - p)]``, p clipped to [eps, 1 - eps]."""
    p, y = _check(probabilities, labels)
    if p.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.where(y, np.log(p), np.log1p(-p)).mean())


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability table: predictions in [lower, upper)."""

    lower: float
    upper: float
    count: int
    mean_probability: float  # NaN for an empty bin
    skip_rate: float  # the observed fraction skipped; NaN for an empty bin


@dataclass(frozen=True)
class Calibration:
    ece: float
    bins: tuple[ReliabilityBin, ...]

    def to_dict(self) -> dict[str, object]:
        return {"ece": self.ece, "bins": [asdict(b) for b in self.bins]}


def calibration(
    probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
) -> Calibration:
    """Expected calibration error over ``num_bins`` equal-width bins of [0, 1] (the
    last bin includes 1.0), and the per-bin reliability table."""
    p, y = _check(probabilities, labels)
    if num_bins < 1:
        raise ValueError("num_bins must be >= 1")
    which = np.clip(np.floor(p * num_bins).astype(np.int64), 0, num_bins - 1)
    counts = np.bincount(which, minlength=num_bins)
    sum_p = np.bincount(which, p, minlength=num_bins)
    sum_y = np.bincount(which, y.astype(np.float64), minlength=num_bins)
    bins = []
    ece = 0.0
    for b in range(num_bins):
        n = int(counts[b])
        mean_p = sum_p[b] / n if n else float("nan")
        rate = sum_y[b] / n if n else float("nan")
        if n:
            ece += n / p.size * abs(rate - mean_p)
        bins.append(ReliabilityBin(b / num_bins, (b + 1) / num_bins, n, mean_p, rate))
    return Calibration(float(ece) if p.size else float("nan"), tuple(bins))


@dataclass(frozen=True)
class _PairwiseParts:
    """Per-session Mann-Whitney sums of the within-group pairs."""

    wins: np.ndarray  # float [S]: sum of (1 for a win, 1/2 for a tie) over pairs
    pairs: np.ndarray  # float [S]: number of (skipped, played) pairs
    sessions: np.ndarray  # int64 [N], the session index of each example


def _pairwise_parts(
    scores: np.ndarray,
    labels: np.ndarray,
    session_ids: np.ndarray,
    previous_skipped: np.ndarray,
) -> _PairwiseParts:
    s, y = _check(scores, labels)
    sessions, num_sessions = session_index(session_ids)
    previous = np.asarray(previous_skipped, dtype=bool)
    if not (sessions.shape == previous.shape == s.shape):
        raise ValueError("scores, labels, session_ids, previous_skipped: one length")
    groups = sessions * 2 + previous  # [N]: one group per (session, previous event)
    order = np.lexsort((s, groups))
    g_sorted, s_sorted, y_sorted = groups[order], s[order], y[order]
    # Runs of equal (group, score): ties inside a group.
    new = np.ones(s.size, dtype=bool)
    new[1:] = (g_sorted[1:] != g_sorted[:-1]) | (s_sorted[1:] != s_sorted[:-1])
    starts = np.flatnonzero(new)
    if starts.size == 0:
        zeros = np.zeros(num_sessions)
        return _PairwiseParts(zeros, zeros.copy(), sessions)
    run_group = g_sorted[starts]
    positive = np.add.reduceat(y_sorted.astype(np.float64), starts)
    negative = np.add.reduceat((~y_sorted).astype(np.float64), starts)
    # Negatives of the same group in earlier (lower-scoring) runs.
    cumulative = np.cumsum(negative) - negative
    first_run = np.ones(starts.size, dtype=bool)
    first_run[1:] = run_group[1:] != run_group[:-1]
    group_offset = np.maximum.accumulate(np.where(first_run, cumulative, 0.0))
    below = cumulative - group_offset
    wins_per_run = positive * (below + 0.5 * negative)
    run_session = run_group // 2
    wins = np.bincount(run_session, wins_per_run, num_sessions)
    group_positive = np.bincount(run_group, positive, 2 * num_sessions)
    group_negative = np.bincount(run_group, negative, 2 * num_sessions)
    pairs = (group_positive * group_negative).reshape(num_sessions, 2).sum(axis=1)
    return _PairwiseParts(wins, pairs, sessions)


@dataclass(frozen=True)
class PairwiseAUC:
    auc: float  # NaN when there is no pair
    num_pairs: int


def pairwise_auc(
    scores: np.ndarray,
    labels: np.ndarray,
    session_ids: np.ndarray,
    previous_skipped: np.ndarray,
) -> PairwiseAUC:
    """AUC over (skipped, played) pairs of one session with the same previous event.

    A pair counts 1 when the skipped example scores higher, 1/2 on a tie.
    """
    parts = _pairwise_parts(scores, labels, session_ids, previous_skipped)
    pairs = float(parts.pairs.sum())
    value = float(parts.wins.sum()) / pairs if pairs else float("nan")
    return PairwiseAUC(value, int(pairs))


def skip_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    session_ids: np.ndarray,
    previous_skipped: np.ndarray,
    num_bins: int = NUM_BINS,
) -> dict[str, object]:
    """Every skip-prediction metric of one predictor on the same examples.

    ``auc``, ``log_loss``, ``ece``, ``brier``, ``auc_after_play`` and
    ``auc_after_skip`` (the AUC within each previous event), ``pairwise_auc`` and
    ``num_pairs``, ``num_examples``, ``skip_rate`` and ``reliability`` (the bins).
    """
    p, y = _check(probabilities, labels)
    previous = np.asarray(previous_skipped, dtype=bool)
    cal = calibration(p, y, num_bins)
    pairwise = pairwise_auc(p, y, session_ids, previous)
    return {
        "auc": auc(p, y),
        "log_loss": log_loss(p, y),
        "ece": cal.ece,
        "brier": float(((p - y) ** 2).mean()) if p.size else float("nan"),
        "auc_after_play": auc(p[~previous], y[~previous]),
        "auc_after_skip": auc(p[previous], y[previous]),
        "pairwise_auc": pairwise.auc,
        "num_pairs": pairwise.num_pairs,
        "num_examples": int(p.size),
        "skip_rate": float(y.mean()) if y.size else float("nan"),
        "reliability": cal.to_dict()["bins"],
    }


def _difference(
    point_a: float,
    point_b: float,
    samples_a: np.ndarray,
    samples_b: np.ndarray,
    num_examples: int,
    num_sessions: int,
    num_resamples: int,
    level: float,
) -> PairedDifference:
    low, high = percentile_interval(samples_a - samples_b, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = samples_a / samples_b
    ratio_low, ratio_high = percentile_interval(ratios, level)
    return PairedDifference(
        difference=point_a - point_b,
        low=low,
        high=high,
        ratio=point_a / point_b if point_b else float("nan"),
        ratio_low=ratio_low,
        ratio_high=ratio_high,
        num_examples=num_examples,
        num_sessions=num_sessions,
        num_resamples=num_resamples,
        level=level,
    )


def auc_difference(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    session_ids: np.ndarray,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """AUC(a) - AUC(b) on the same examples, paired session-bootstrap interval."""
    a, y = _check(scores_a, labels)
    b, _ = _check(scores_b, labels)
    sessions, num_sessions = session_index(session_ids)
    if sessions.shape != a.shape or a.size == 0:
        raise ValueError("scores, labels and session_ids: one non-empty length")
    samples_a, samples_b = [], []
    rows = max(1, _AUC_CHUNK_CELLS // a.size)
    for counts in resample_counts(num_sessions, num_resamples, seed):  # [r, S]
        for start in range(0, counts.shape[0], rows):
            weights = counts[start : start + rows][:, sessions]  # [r', N]
            samples_a.append(weighted_auc(a, y, weights))
            samples_b.append(weighted_auc(b, y, weights))
    return _difference(
        auc(a, y),
        auc(b, y),
        np.concatenate(samples_a),
        np.concatenate(samples_b),
        a.size,
        num_sessions,
        num_resamples,
        level,
    )


def pairwise_auc_difference(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    session_ids: np.ndarray,
    previous_skipped: np.ndarray,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """Within-session pairwise AUC(a) - (b), paired session-bootstrap interval.

    Every pair lies inside one session, so a resample weighs each session's pair
    counts by how often the session was drawn.
    """
    parts_a = _pairwise_parts(scores_a, labels, session_ids, previous_skipped)
    parts_b = _pairwise_parts(scores_b, labels, session_ids, previous_skipped)
    pairs = float(parts_a.pairs.sum())
    samples_a, samples_b = [], []
    for counts in resample_counts(len(parts_a.pairs), num_resamples, seed):
        drawn = counts @ parts_a.pairs
        with np.errstate(invalid="ignore", divide="ignore"):
            samples_a.append(np.where(drawn > 0, counts @ parts_a.wins / drawn, np.nan))
            samples_b.append(np.where(drawn > 0, counts @ parts_b.wins / drawn, np.nan))
    nan = float("nan")
    return _difference(
        float(parts_a.wins.sum()) / pairs if pairs else nan,
        float(parts_b.wins.sum()) / pairs if pairs else nan,
        np.concatenate(samples_a),
        np.concatenate(samples_b),
        len(parts_a.sessions),
        len(parts_a.pairs),
        num_resamples,
        level,
    )


# --- baselines -----------------------------------------------------------------
