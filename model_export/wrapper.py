"""The serving graph: encoded sessions -> top-K tracks for the next position.

Dimension legend: B batch, T sequence length, D hidden dim, V item vocabulary (tracks +
specials), E excluded ids per row, K tracks returned per row.

This is exactly what ``model.onnx`` computes, and nothing more: the transformer runs
over the T input positions, but only the last position is scored against the
catalogue (nanoGPT's inference-time ``x[:, [-1], :]``). PAD/OOV/MASK and every
excluded id are set to -inf before TopK (gSASRec ``get_predictions``), so a row with at
least k rankable tracks yields k real tracks; rows with fewer end in -inf scores that
the caller drops. A run's transition prior (``training/prior.py``) is added to the
scores before that masking: its ``[V, N]`` successor ids and weights are graph
constants and ``training.prior.prior_scores`` is the computation (Gather +
ScatterElements), the function ``TorchScorer`` adds offline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from skiprec.vocab import NUM_SPECIAL
from training.model import SessionEncoder
from training.prior import TransitionPrior, prior_scores


class ServingModule(nn.Module):
    """Wraps a trained ``SessionEncoder`` for export; ``eval()`` mode always."""

    prior_successors: Tensor  # buffers of a run with a transition prior
    prior_table: Tensor

    def __init__(
        self,
        encoder: SessionEncoder,
        top_k: int,
        prior: TransitionPrior | None = None,
    ) -> None:
        super().__init__()
        num_tracks = encoder.config.num_items - NUM_SPECIAL
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.encoder = encoder
        self.top_k = min(top_k, num_tracks)
        # The tied item table, transposed once at export: [V, D] -> [D, V] contiguous, a
        # graph constant so inference is one plain MatMul with no per-call Transpose.
        self.register_buffer(
            "item_table_t", encoder.item_emb.weight.detach().T.contiguous().clone()
        )
        special_bias = torch.zeros(encoder.config.num_items)
        special_bias[:NUM_SPECIAL] = float("-inf")
        self.register_buffer("special_bias", special_bias)  # [V]
        self.prior_weights: tuple[float, float] | None = None  # (alpha, gamma)
        if prior is not None:
            if prior.num_items != encoder.config.num_items:
                raise ValueError(
                    f"transition prior has {prior.num_items} rows, the model "
                    f"{encoder.config.num_items} items"
                )
            self.prior_weights = (prior.alpha, prior.gamma)
            self.register_buffer(
                "prior_successors", torch.from_numpy(prior.successors.copy())
            )  # int64 [V, N]
            self.register_buffer(
                "prior_table", torch.from_numpy(prior.weights.copy())
            )  # float32 [V, N]
        self.train(False)  # dropout off: the graph is the inference path only

    def logits(self, item_ids: Tensor, feedback: Tensor, exclude_ids: Tensor) -> Tensor:
        """Masked scores of every item for the last position: [B, V]."""
        hidden = self.encoder(item_ids, feedback)  # [B, T, D]
        last = hidden[:, -1, :]  # [B, D]
        logits = (
            last @ self.item_table_t + self.special_bias
        )  # [B, D] @ [D, V] -> [B, V]
        if self.prior_weights is not None:
            alpha, gamma = self.prior_weights
            logits = logits + prior_scores(
                item_ids,
                feedback,
                self.prior_successors,
                self.prior_table,
                alpha,
                gamma,
            )  # [B, V]
        blocked = torch.full(
            exclude_ids.shape, float("-inf"), dtype=logits.dtype, device=logits.device
        )  # [B, E]
        # Duplicate or PAD exclude ids are harmless: every write is the same -inf.
        masked: Tensor = logits.scatter(1, exclude_ids, blocked)
        return masked

    def forward(
        self, item_ids: Tensor, feedback: Tensor, exclude_ids: Tensor
    ) -> tuple[Tensor, Tensor]:
        """item_ids, feedback int64 [B, T]; exclude_ids int64 [B, E] (PAD-filled)
        -> (top_indices int64 [B, K], top_scores float32 [B, K]), best first."""
        scores, indices = torch.topk(
            self.logits(item_ids, feedback, exclude_ids), self.top_k, dim=1
        )
        return indices, scores
