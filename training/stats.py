"""Paired, session-level bootstrap intervals for differences between two variants.

Examples of one session are not independent (the same listener, a shared history), so
resampling single examples would make intervals too narrow. Here whole sessions are
resampled with replacement (a cluster bootstrap) and both variants are scored on the
same resample (paired): the interval is that of ``mean(a) - mean(b)`` over examples,
and of the ratio ``mean(a) / mean(b)``, by the percentile method.

One resample draws ``S`` session indices uniformly with replacement; its statistic is a
ratio of sums over the drawn sessions (each session counted as often as it was drawn),
so a session weighs by its number of examples, as in the point estimate.
``resample_counts`` yields those per-session counts; other statistics (skip AUC,
``training.skip_metrics.auc_difference``) reuse the same draws.

Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13 (percentile
intervals); Field & Welsh, "Bootstrapping clustered data", JRSS B 69 (2007).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

NUM_RESAMPLES = 1000
LEVEL = 0.95
# Cells of the [resamples, sessions] count matrix built at once, to bound memory.
_CHUNK_CELLS = 2_000_000


def session_index(session_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Any session labels [N] -> (0-based session index int64 [N], number of
    sessions)."""
    labels = np.asarray(session_ids)
    if labels.ndim != 1:
        raise ValueError(f"session_ids must be 1-d, got shape {labels.shape}")
    unique, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), len(unique)


def resample_counts(
    num_sessions: int, num_resamples: int = NUM_RESAMPLES, seed: int = 0
) -> Iterator[np.ndarray]:
    """How often each session is drawn, resample by resample: int64 [r, S] chunks,
    ``num_resamples`` rows in all; each row sums to ``num_sessions``. Seeded."""
    if num_sessions < 1 or num_resamples < 1:
        raise ValueError("need at least one session and one resample")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_CELLS // num_sessions)
    for start in range(0, num_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, num_resamples - start)
        picks = rng.integers(0, num_sessions, size=(rows, num_sessions))
        flat = picks + (np.arange(rows) * num_sessions)[:, None]
        yield np.bincount(flat.ravel(), minlength=rows * num_sessions).reshape(
            rows, num_sessions
        )


def percentile_interval(
    samples: np.ndarray, level: float = LEVEL
) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap samples (NaN samples dropped)."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    """``mean(a) - mean(b)`` and ``mean(a) / mean(b)`` with bootstrap intervals."""

    difference: float
    low: float
    high: float
    ratio: float  # NaN when mean(b) is 0
    ratio_low: float
    ratio_high: float
    num_examples: int
    num_sessions: int
    num_resamples: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or below zero."""
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator != 0, numerator / denominator, np.nan)


def paired_bootstrap(
    values_a: np.ndarray,
    values_b: np.ndarray,
    session_ids: np.ndarray,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """Paired session bootstrap of the difference of two per-example means.

    Args:
        values_a, values_b: float [N], the per-example metric of each variant on the
            same examples (e.g. ``training.metrics.ndcg_per_example``).
        session_ids: [N], the session of each example (any labels).
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    sessions, num_sessions = session_index(session_ids)
    if not (a.shape == b.shape == sessions.shape) or a.size == 0:
        raise ValueError(
            f"need non-empty values_a, values_b and session_ids of one length, got "
            f"{a.shape}, {b.shape}, {sessions.shape}"
        )
    sum_a = np.bincount(sessions, a, num_sessions)  # [S]
    sum_b = np.bincount(sessions, b, num_sessions)
    size = np.bincount(sessions, None, num_sessions).astype(np.float64)
    differences, ratios = [], []
    for counts in resample_counts(num_sessions, num_resamples, seed):  # [r, S]
        drawn_a, drawn_b, drawn_n = counts @ sum_a, counts @ sum_b, counts @ size
        differences.append((drawn_a - drawn_b) / drawn_n)
        ratios.append(_ratio(drawn_a, drawn_b))
    low, high = percentile_interval(np.concatenate(differences), level)
    ratio_low, ratio_high = percentile_interval(np.concatenate(ratios), level)
    mean_b = float(b.mean())
    return PairedDifference(
        difference=float(a.mean() - mean_b),
        low=low,
        high=high,
        ratio=float(a.mean() / mean_b) if mean_b != 0 else float("nan"),
        ratio_low=ratio_low,
        ratio_high=ratio_high,
        num_examples=int(a.size),
        num_sessions=num_sessions,
        num_resamples=num_resamples,
        level=level,
    )
