"""The serving graph: encoded sessions -> top-K tracks for the next position.

Dimension legend: B batch, T sequence length, D hidden dim, V item vocabulary (tracks +
specials), E excluded ids per row, K tracks returned per row, N candidates per row.

This is exactly what ``model.onnx`` computes, and nothing more: the transformer runs
over the T input positions, but only the last position is scored against the
catalogue (nanoGPT's inference-time ``x[:, [-1], :]``). PAD/OOV/MASK and every
excluded id are set to -inf before TopK (gSASRec ``get_predictions``), so a row with at
least k rankable tracks yields k real tracks; rows with fewer end in -inf scores that
the caller drops. A run's transition prior (``training/prior.py``) is added to the
scores before that masking: its ``[V, N]`` successor ids and weights are graph
constants and ``training.prior.prior_scores`` is the computation (Gather +
ScatterElements), the function ``TorchScorer`` adds offline.

Skip head (schema 2): ``p_skip`` of a track is the model's ``SkipHead`` probability
that the listener skips it if it comes next. With a ranking weight beta
(``skip_weight``, chosen on validation) != 0 the scores are ``logits (+ prior) +
beta * log(1 - p_skip)``, which needs p_skip of all V tracks before TopK (a second
``[B, D] @ [D, V]`` MatMul on the same table); with beta = 0 the ranking is the
logits' and p_skip is computed for the K returned tracks only. The client's
``candidate_ids`` get the same scores (gathered from the masked [B, V] scores: PAD,
OOV, MASK and excluded ids are -inf) and their p_skip. p_skip is NaN where it means
nothing: every p_skip of a model without a head, a top-K entry whose score is -inf
(not a track) and a candidate that is a special id (PAD, OOV, MASK).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skiprec.vocab import NUM_SPECIAL
from training.model import SessionEncoder
from training.prior import TransitionPrior, prior_scores


class ServingModule(nn.Module):
    """Wraps a trained ``SessionEncoder`` for export; ``eval()`` mode always.

    ``forward`` is the graph (outputs in ``skiprec.manifest.OUTPUT_NAMES`` order);
    ``logits`` and ``reference`` are the torch references parity compares it with.
    """

    item_table_t: Tensor  # buffers, [D, V] and [V]
    special_bias: Tensor
    prior_successors: Tensor  # buffers of a run with a transition prior
    prior_table: Tensor
    skip_bias: Tensor  # buffer of a model with a skip head

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
        # Skip head: beta is a Python constant, so the graph holds only the branch
        # it needs (beta = 0: no [B, V] skip scores at all).
        self.skip_head = encoder.skip_head is not None
        self.skip_weight = encoder.skip_weight
        if encoder.skip_head is not None:
            # r_c of every track as a named [V] constant for the all-items path.
            bias = encoder.skip_head.bias_emb.weight.detach()[:, 0].clone()
            self.register_buffer("skip_bias", bias)
        self.train(False)  # dropout off: the graph is the inference path only

    def _scores(self, item_ids: Tensor, feedback: Tensor, last: Tensor) -> Tensor:
        """Unmasked next-track scores of every item, without the skip term: [B, V]."""
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
        return logits

    def _skip_logits_all(self, last: Tensor) -> Tensor:
        """Skip logits of every item: [B, D] -> [B, V], on the graph's [D, V] table
        (``SessionEncoder.skip_logits_all`` would add a transposed copy)."""
        head = self.encoder.skip_head
        assert head is not None
        query, session = head.features(last)  # [B, D], [B]
        # [B, D] @ [D, V] + [V] + [B, 1] -> [B, V]
        return query @ self.item_table_t + self.skip_bias + session[:, None]

    @staticmethod
    def _mask(scores: Tensor, exclude_ids: Tensor) -> Tensor:
        """``scores`` [B, V] with every excluded id [B, E] at -inf."""
        blocked = torch.full(
            exclude_ids.shape, float("-inf"), dtype=scores.dtype, device=scores.device
        )  # [B, E]
        # Duplicate or PAD exclude ids are harmless: every write is the same -inf.
        masked: Tensor = scores.scatter(1, exclude_ids, blocked)
        return masked

    def logits(self, item_ids: Tensor, feedback: Tensor, exclude_ids: Tensor) -> Tensor:
        """Masked ranking scores of every item for the last position: [B, V]."""
        last = self.encoder(item_ids, feedback)[:, -1, :]  # [B, T, D] -> [B, D]
        scores = self._scores(item_ids, feedback, last)
        if self.skip_weight:
            skip = self._skip_logits_all(last)  # [B, V]
            # log(1 - sigmoid(z)) = logsigmoid(-z), finite for any z
            scores = scores + self.skip_weight * F.logsigmoid(-skip)
        return self._mask(scores, exclude_ids)

    def forward(
        self,
        item_ids: Tensor,
        feedback: Tensor,
        exclude_ids: Tensor,
        candidate_ids: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """item_ids, feedback int64 [B, T]; exclude_ids int64 [B, E] and
        candidate_ids int64 [B, N], both PAD-filled, every id in 0..V-1 ->
        (top_indices int64 [B, K], top_scores [B, K], top_p_skip [B, K],
        candidate_scores [B, N], candidate_p_skip [B, N]), float32, best first."""
        last = self.encoder(item_ids, feedback)[:, -1, :]  # [B, T, D] -> [B, D]
        scores = self._scores(item_ids, feedback, last)  # [B, V]
        skip_all = None
        if self.skip_weight:
            skip_all = self._skip_logits_all(last)  # [B, V]
            scores = scores + self.skip_weight * F.logsigmoid(-skip_all)
        scores = self._mask(scores, exclude_ids)
        top_scores, top_indices = torch.topk(scores, self.top_k, dim=1)  # [B, K]
        candidate_scores = scores.gather(1, candidate_ids)  # [B, N]
        if not self.skip_head:
            nan = float("nan")
            return (
                top_indices,
                top_scores,
                torch.full_like(top_scores, nan),
                candidate_scores,
                torch.full_like(candidate_scores, nan),
            )
        if skip_all is not None:
            top_logits = skip_all.gather(1, top_indices)  # [B, K]
            candidate_logits = skip_all.gather(1, candidate_ids)  # [B, N]
        else:
            top_logits = self.encoder.skip_logits(last, top_indices)
            candidate_logits = self.encoder.skip_logits(last, candidate_ids)
        top_p_skip = torch.sigmoid(top_logits).masked_fill(
            torch.isneginf(top_scores), float("nan")
        )
        candidate_p_skip = torch.sigmoid(candidate_logits).masked_fill(
            candidate_ids < NUM_SPECIAL, float("nan")
        )
        return top_indices, top_scores, top_p_skip, candidate_scores, candidate_p_skip

    def reference(
        self,
        item_ids: Tensor,
        feedback: Tensor,
        exclude_ids: Tensor,
        candidate_ids: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What parity compares the graph with, by the model's own methods:
        (ranking scores [B, V], p_skip of every item [B, V] (NaN without a head),
        candidate_scores [B, N], candidate_p_skip [B, N])."""
        scores = self.logits(item_ids, feedback, exclude_ids)
        last = self.encoder(item_ids, feedback)[:, -1, :]  # [B, D]
        if self.skip_head:
            p_skip = torch.sigmoid(self.encoder.skip_logits_all(last))  # [B, V]
        else:
            p_skip = torch.full_like(scores, float("nan"))
        candidate_p_skip = p_skip.gather(1, candidate_ids).masked_fill(
            candidate_ids < NUM_SPECIAL, float("nan")
        )
        return scores, p_skip, scores.gather(1, candidate_ids), candidate_p_skip
