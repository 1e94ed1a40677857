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
They are split again by the previous event (``after_play/``, ``after_skip/``): the
played and skipped populations differ in what came before them (a skipped target
follows a skip far more often), so a played/skipped gap read on its own mixes the
model's skip-awareness with that difference; within one previous event it does not.

``hit_per_example`` and ``ndcg_per_example`` give the per-example values behind the
means, for paired tests (``training.stats.paired_bootstrap``).
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


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def hit_per_example(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the target is in the top k, else 0.0; float [N]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return (ranks < k).astype(np.float64)


def ndcg_per_example(ranks: np.ndarray, k: int) -> np.ndarray:
    """``1 / log2(rank + 2)`` where the target is in the top k, else 0.0; float [N]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gain = 1.0 / np.log2(np.where(np.isfinite(ranks), ranks, 0.0) + 2.0)
    return np.where(ranks < k, gain, 0.0)


def mrr_per_example(ranks: np.ndarray, k: int) -> np.ndarray:
    """``1 / (rank + 1)`` where the target is in the top k, else 0.0; float [N]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gain = 1.0 / (np.where(np.isfinite(ranks), ranks, 0.0) + 1.0)
    return np.where(ranks < k, gain, 0.0)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return _mean(hit_per_example(ranks, k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    return _mean(ndcg_per_example(ranks, k))


def mrr(ranks: np.ndarray, k: int) -> float:
    return _mean(mrr_per_example(ranks, k))


def _block(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}hr@{k}"] = hit_rate(ranks, k)
    for k in ks:
        out[f"{prefix}ndcg@{k}"] = ndcg(ranks, k)
    for k in ks:
        out[f"{prefix}mrr@{k}"] = mrr(ranks, k)
    return out


def _played_skipped(
    ranks: np.ndarray, skipped: np.ndarray, ks: tuple[int, ...], prefix: str
) -> dict[str, float]:
    out = _block(ranks, ks, prefix)
    out.update(_block(ranks[~skipped], ks, f"{prefix}played/"))
    out.update(_block(ranks[skipped], ks, f"{prefix}skipped/"))
    out[f"{prefix}skip_mrr@10"] = out[f"{prefix}skipped/mrr@10"]
    out[f"{prefix}ndcg_gap@10"] = (
        out[f"{prefix}played/ndcg@10"] - out[f"{prefix}skipped/ndcg@10"]
    )
    out[f"{prefix}num_examples"] = float(ranks.size)
    out[f"{prefix}num_played"] = float((~skipped).sum())
    out[f"{prefix}num_skipped"] = float(skipped.sum())
    return out


def summarize(
    ranks: np.ndarray,
    target_skipped: np.ndarray,
    ks: Sequence[int] = (1, 5, 10, 20),
    previous_skipped: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics, overall and split by played/skipped target.

    Returns ``hr@k``, ``ndcg@k``, ``mrr@k`` for every k in ``ks``, the same prefixed
    ``played/`` and ``skipped/`` (0.0 for an empty group; see ``num_*``),
    ``skip_mrr@10``, ``ndcg_gap@10``, ``num_examples``, ``num_played``, ``num_skipped``.
    With ``previous_skipped`` (bool [N], whether the event before each target was a
    skip) every one of those keys again prefixed ``after_play/`` and ``after_skip/``,
    computed on the examples after a played and after a skipped event.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    skipped = np.asarray(target_skipped, dtype=bool)
    if ranks.shape != skipped.shape:
        raise ValueError(f"ranks {ranks.shape} and target_skipped {skipped.shape}")
    ks = tuple(sorted(set(ks) | {10}))
    out = _played_skipped(ranks, skipped, ks, "")
    if previous_skipped is not None:
        previous = np.asarray(previous_skipped, dtype=bool)
        if previous.shape != ranks.shape:
            raise ValueError(
                f"ranks {ranks.shape} and previous_skipped {previous.shape}"
            )
        for prefix, group in (("after_play/", ~previous), ("after_skip/", previous)):
            out.update(_played_skipped(ranks[group], skipped[group], ks, prefix))
    return out
