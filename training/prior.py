"""The transition prior: training-split successor counts added to a model's scores.

Dimension legend: B batch, T sequence length, V item vocabulary (tracks + specials),
N successors kept per track.

A first-order Markov chain on the last track is a strong baseline on listening
sessions (docs/RESULTS.md), and the transformer's scores do not fully contain it. The
prior adds, to every candidate ``c`` of a window,

    alpha * w(last, c) + gamma * mean_{e in earlier} w(e, c),
    w(a, c) = log1p(count of a -> c in the training sessions), top-N successors of a,

where ``last`` is the window's last real track (PAD, OOV and MASK positions are not
tracks: for BERT4Rec it is the last event before the appended MASK) and ``earlier``
the window's other real tracks. ``alpha`` and ``gamma`` are chosen on the validation
examples (:func:`tune_prior`, called once at the end of ``training.trainer.train``),
under the serving policy. The table is a dense ``[V, N]`` pair (successor ids, weights)
so the exported graph computes the same thing with a Gather and a ScatterElements
(``model_export/wrapper.py``): :func:`prior_scores` is that computation.

A run directory with a prior holds ``prior.npz`` (:meth:`TransitionPrior.save`); a
run without one (every run trained before the prior existed) scores as it always did.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from skiprec.encoding import FEEDBACK_MASK, FEEDBACK_PAD, encode_events, encode_sessions
from skiprec.policy import SessionPolicy
from skiprec.vocab import NUM_SPECIAL, OOV_ID, PAD_ID, Vocabulary
from training.config import PriorConfig
from training.data import Session
from training.evaluation import apply_policy, evaluate
from training.metrics import ndcg, ranks_from_scores
from training.model import SessionEncoder
from training.scoring import TorchScorer
from training.splits import EvalExample, Split

PRIOR_FILE = "prior.npz"
DEFAULT_NUM_SUCCESSORS = 64
# The validation grid. alpha = gamma = 0 is in it: a prior that does not help is not
# kept (no table in the run, nothing added to the graph).
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
GAMMAS = (0.0, 0.1, 0.25, 0.5)
TUNING_K = 10


@dataclass(frozen=True)
class TransitionPrior:
    """A fitted successor table and its two weights."""

    successors: np.ndarray  # int64 [V, N]: best successors first, PAD-filled
    weights: np.ndarray  # float32 [V, N]: log1p(count), 0 where PAD
    alpha: float = 0.0  # weight of the last track's successors
    gamma: float = 0.0  # weight of the mean over the earlier tracks' successors

    def __post_init__(self) -> None:
        problems = _table_problems(self.successors, self.weights)
        if not (np.isfinite(self.alpha) and np.isfinite(self.gamma)):
            problems.append(f"alpha {self.alpha!r}, gamma {self.gamma!r} not finite")
        if problems:
            raise ValueError("transition prior: " + "; ".join(problems))

    @property
    def num_items(self) -> int:
        """V: rows of the table (the vocabulary's size)."""
        return int(self.successors.shape[0])

    @property
    def num_successors(self) -> int:
        """N: successors kept per track."""
        return int(self.successors.shape[1])

    def with_weights(self, alpha: float, gamma: float) -> TransitionPrior:
        return TransitionPrior(self.successors, self.weights, alpha, gamma)

    def scores(self, item_ids: Tensor, feedback: Tensor) -> Tensor:
        """The prior of every item for encoded windows: [B, T] -> float32 [B, V]."""
        successors = torch.from_numpy(self.successors).to(item_ids.device)
        weights = torch.from_numpy(self.weights).to(item_ids.device)
        return prior_scores(
            item_ids, feedback, successors, weights, self.alpha, self.gamma
        )

    def describe(self) -> dict[str, Any]:
        """What a manifest or a metrics file records: N, alpha, gamma."""
        return {
            "num_successors": self.num_successors,
            "alpha": self.alpha,
            "gamma": self.gamma,
        }

    def save(self, path: Path) -> None:
        # np.savez appends ".npz" to a name without it; write through a file object.
        with path.open("wb") as out:
            np.savez(
                out,
                successors=self.successors,
                weights=self.weights,
                alpha=np.float64(self.alpha),
                gamma=np.float64(self.gamma),
            )

    @classmethod
    def load(cls, path: Path) -> TransitionPrior:
        """Read ``prior.npz``; ValueError for a file that is not a valid table."""
        with np.load(path, allow_pickle=False) as payload:
            missing = {"successors", "weights", "alpha", "gamma"} - set(payload.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)}")
            try:
                return cls(
                    successors=payload["successors"],
                    weights=payload["weights"],
                    alpha=float(payload["alpha"]),
                    gamma=float(payload["gamma"]),
                )
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc


def _table_problems(successors: np.ndarray, weights: np.ndarray) -> list[str]:
    if successors.dtype != np.int64 or weights.dtype != np.float32:
        return [f"dtypes {successors.dtype}/{weights.dtype}, need int64/float32"]
    if successors.ndim != 2 or successors.shape != weights.shape:
        return [f"shapes {successors.shape}/{weights.shape}, need equal [V, N]"]
    problems = []
    num_items = successors.shape[0]
    if successors.size and not (
        (successors >= 0).all() and (successors < num_items).all()
    ):
        problems.append(f"successor ids outside 0..{num_items - 1}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        problems.append("weights must be finite and >= 0")
    if (weights[successors == PAD_ID] != 0).any():
        problems.append("PAD successors must have weight 0")
    return problems


def fit_transitions(
    sessions: Sequence[Session],
    vocab: Vocabulary,
    num_successors: int = DEFAULT_NUM_SUCCESSORS,
) -> TransitionPrior:
    """Count consecutive ``a -> b`` events of ``sessions`` (real tracks only); keep, per
    track, its ``num_successors`` most frequent successors (ties: lower index first)
    with weight log1p(count). The weights alpha = gamma = 0 until tuned."""
    if num_successors < 1:
        raise ValueError(f"num_successors must be >= 1, got {num_successors}")
    size = vocab.size
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for session in sessions:
        indices = np.asarray(vocab.indices(session.track_ids), dtype=np.int64)
        sources.append(indices[:-1])
        targets.append(indices[1:])
    source = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
    target = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    real = (source >= NUM_SPECIAL) & (target >= NUM_SPECIAL)
    keys, counts = np.unique(source[real] * size + target[real], return_counts=True)
    rows, columns = keys // size, keys % size
    # Per row, most frequent first, then the lower successor index: a total order.
    order = np.lexsort((columns, -counts, rows))
    rows, columns, counts = rows[order], columns[order], counts[order]
    row_start = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - row_start  # position within the row
    kept = rank < num_successors
    width = max(1, min(num_successors, vocab.num_tracks))
    successors = np.full((size, width), PAD_ID, dtype=np.int64)
    weights = np.zeros((size, width), dtype=np.float32)
    successors[rows[kept], rank[kept]] = columns[kept]
    weights[rows[kept], rank[kept]] = np.log1p(counts[kept]).astype(np.float32)
    return TransitionPrior(successors, weights)


def prior_scores(
    item_ids: Tensor,
    feedback: Tensor,
    successors: Tensor,
    weights: Tensor,
    alpha: float,
    gamma: float,
) -> Tensor:
    """alpha * w(last real track, .) + gamma * mean over the earlier real tracks of
    w(track, .), for every item: [B, V].

    Args:
        item_ids, feedback: int64 [B, T], encoded windows (``skiprec.encoding``).
        successors: int64 [V, N]; weights: float32 [V, N] (0 where PAD).

    Pure tensor code with a fixed op set (comparisons, ReduceMax, Gather,
    ScatterElements-add), so the exported graph runs exactly this. A row without a
    real track gets 0 everywhere.
    """
    B, T = item_ids.shape
    real = (
        (item_ids >= NUM_SPECIAL)
        & (feedback != FEEDBACK_PAD)
        & (feedback != FEEDBACK_MASK)
    )  # [B, T]
    positions = torch.arange(T, device=item_ids.device)  # [T]
    last_position = torch.where(real, positions, -1).amax(dim=1, keepdim=True)  # [B, 1]
    is_last = real & (positions == last_position)  # [B, T]
    earlier = real & ~is_last  # [B, T]
    num_earlier = earlier.sum(dim=1, keepdim=True).clamp(min=1)  # [B, 1]
    coefficient = alpha * is_last.to(weights.dtype) + gamma * earlier.to(
        weights.dtype
    ) / num_earlier.to(weights.dtype)  # [B, T]
    # PAD's row is all PAD with weight 0; index_select is one plain Gather in ONNX.
    ids = torch.where(real, item_ids, PAD_ID).reshape(-1)  # [B*T]
    rows = successors.index_select(0, ids).reshape(B, -1)  # [B*T, N] -> [B, T*N]
    values = (
        weights.index_select(0, ids).reshape(B, T, -1) * coefficient[..., None]
    ).reshape(B, -1)  # [B, T, N] -> [B, T*N]
    out = torch.zeros(
        (B, successors.shape[0]), dtype=weights.dtype, device=item_ids.device
    )  # [B, V]
    return out.scatter_add(1, rows, values)


def tune_prior(
    model: SessionEncoder,
    split: Split,
    vocab: Vocabulary,
    config: PriorConfig,
    policy: SessionPolicy = SessionPolicy(),
) -> tuple[TransitionPrior | None, dict[str, Any]]:
    """Fit the table on ``split.train`` and choose (alpha, gamma) from the grid by
    validation NDCG@10 under ``policy`` (ties: the first in grid order, so the
    smaller weights). Returns (the prior, or None when it is off or (0, 0) wins, and
    what was chosen, for the run's metrics: N, alpha, gamma, the grid, and the model's
    test metrics without the prior, the ablation row)."""
    if not config.transition_prior:
        return None, {}
    table = fit_transitions(split.train, vocab, config.prior_successors)
    grid = list(itertools.product(ALPHAS, GAMMAS))
    gains = _grid_ndcg(model, table, split.validation, vocab, policy, grid)
    best = max(range(len(grid)), key=lambda i: gains[i])
    alpha, gamma = grid[best]
    prior = table.with_weights(alpha, gamma) if alpha or gamma else None
    summary: dict[str, Any] = {
        **table.with_weights(alpha, gamma).describe(),
        "kept": prior is not None,
        "chosen_on": "validation ndcg@10, default session policy",
        "validation_ndcg@10": gains[best],
        "validation_ndcg@10_without": gains[grid.index((0.0, 0.0))],
        "grid": [
            {"alpha": a, "gamma": g, "validation_ndcg@10": gain}
            for (a, g), gain in zip(grid, gains, strict=True)
        ],
    }
    if split.test:
        summary["test_without_prior"] = evaluate(
            TorchScorer(model), split.test, vocab, policy
        )
    return prior, summary


def _grid_ndcg(
    model: SessionEncoder,
    table: TransitionPrior,
    examples: Sequence[EvalExample],
    vocab: Vocabulary,
    policy: SessionPolicy,
    grid: Sequence[tuple[float, float]],
    batch_size: int = 512,
) -> list[float]:
    """Validation NDCG@10 of every (alpha, gamma): the model's scores and both prior
    terms are computed once per batch, then combined per grid point, with the
    harness's rules (``training.evaluation``: specials never ranked, the policy)."""
    scorer = TorchScorer(model, batch_size=batch_size)
    last_only, earlier_only = table.with_weights(1.0, 0.0), table.with_weights(0.0, 1.0)
    ranks: list[list[np.ndarray]] = [[] for _ in grid]
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        histories = [encode_events(e.history, vocab) for e in batch]
        targets = np.array([vocab.index(e.target) for e in batch], dtype=np.int64)
        targets[targets == OOV_ID] = -1
        base = scorer.score(histories).astype(np.float64)  # [B, V], specials -inf
        apply_policy(base, histories, policy)  # -inf and penalties: additive
        item_ids, feedback = map(
            torch.from_numpy, encode_sessions(histories, scorer.spec)
        )
        with torch.inference_mode():
            last = last_only.scores(item_ids, feedback).double().numpy()
            rest = earlier_only.scores(item_ids, feedback).double().numpy()
        for i, (alpha, gamma) in enumerate(grid):
            ranks[i].append(
                ranks_from_scores(base + alpha * last + gamma * rest, targets)
            )
    return [ndcg(np.concatenate(r), TUNING_K) if r else 0.0 for r in ranks]
