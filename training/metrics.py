"""Ranking metrics for next-track prediction (numpy only; no torch).

A rank is the 0-based position of the target in the model's ranking; ``inf`` means
the target could not be ranked (OOV, excluded by the policy): a miss for every
metric. With one relevant item per example:
    HR@k   = mean[rank < k]
    NDCG@k = mean[rank < k] / log2(rank + 2)      (the ideal DCG is 1)
    MRR@k  = mean[rank < k] / (rank + 1)
Metrics are split by whether the target itself was skipped: a skip-aware model
should rank played targets high and skipped targets low, so ``skip_mrr@10`` is
lower-is-better and ``ndcg_gap@10`` = played - skipped NDCG@10 is higher-is-better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among its row's scores; float [N].

    Ties count against the target (rank = number of other items scoring >= it), so a
    constant scorer ranks last rather than first. ``targets < 0`` and targets whose
    score is -inf/NaN get rank ``inf``.

    Args:
        scores: float [N, V].
        targets: int [N], column index of each target, negative = cannot be ranked.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"scores [N, V] and targets [N], got {scores.shape}, {targets.shape}"
        )
    ranks = np.full(targets.shape, np.inf)
    valid = targets >= 0
    if not valid.any():
        return ranks
    rows = np.flatnonzero(valid)
    target_scores = scores[rows, targets[rows]]  # [n]
    at_least = (scores[rows] >= target_scores[:, None]).sum(axis=1) - 1  # [n]
    rankable = np.isfinite(target_scores)
    ranks[rows[rankable]] = at_least[rankable]
    return ranks


def _truncated(ranks: np.ndarray, k: int, gain: np.ndarray) -> float:
    if ranks.size == 0:
        return 0.0
    return float(np.where(ranks < k, gain, 0.0).mean())


def hit_rate(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    return _truncated(ranks, k, np.ones_like(ranks))


def ndcg(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    with np.errstate(divide="ignore"):
        gain = 1.0 / np.log2(np.where(np.isfinite(ranks), ranks, 0.0) + 2.0)
    return _truncated(ranks, k, gain)


def mrr(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    gain = 1.0 / (np.where(np.isfinite(ranks), ranks, 0.0) + 1.0)
    return _truncated(ranks, k, gain)


def _block(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}hr@{k}"] = hit_rate(ranks, k)
    for k in ks:
        out[f"{prefix}ndcg@{k}"] = ndcg(ranks, k)
    for k in ks:
        out[f"{prefix}mrr@{k}"] = mrr(ranks, k)
    return out


def summarize(
    ranks: np.ndarray,
    target_skipped: np.ndarray,
    ks: Sequence[int] = (1, 5, 10, 20),
) -> dict[str, float]:
    """All metrics, overall and split by played/skipped target.

    Returns ``hr@k``, ``ndcg@k``, ``mrr@k`` for every k in ``ks``, the same prefixed
    ``played/`` and ``skipped/`` (0.0 for an empty group; see ``num_*``),
    ``skip_mrr@10``, ``ndcg_gap@10``, ``num_examples``, ``num_played``, ``num_skipped``.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    skipped = np.asarray(target_skipped, dtype=bool)
    if ranks.shape != skipped.shape:
        raise ValueError(f"ranks {ranks.shape} and target_skipped {skipped.shape}")
    ks = tuple(sorted(set(ks) | {10}))
    out = _block(ranks, ks, "")
    out.update(_block(ranks[~skipped], ks, "played/"))
    out.update(_block(ranks[skipped], ks, "skipped/"))
    out["skip_mrr@10"] = out["skipped/mrr@10"]
    out["ndcg_gap@10"] = out["played/ndcg@10"] - out["skipped/ndcg@10"]
    out["num_examples"] = float(ranks.size)
    out["num_played"] = float((~skipped).sum())
    out["num_skipped"] = float(skipped.sum())
    return out
