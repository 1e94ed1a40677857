"""``TorchScorer``: a trained ``SessionEncoder`` as an evaluation ``Scorer``.

Histories are encoded with ``skiprec.encoding.encode_sessions``, the exact function the
service uses on live sessions, and only the last position is scored, as in the exported
graph; special ids get -inf there too. So offline metrics measure what serving would
return, not a training-time shortcut. A run's transition prior (``training/prior.py``),
when it has one, is added to the logits before that, as the graph adds it.

Feedback codes: graded histories (skip levels) go to a graded model as they are; a
model that reads only play/skip gets them coarsened (``skiprec.encoding.binary_code``),
as the service encodes for a binary bundle. With a skip head, ``p_skip`` gives
p(skip | history, next = target), and ``score`` ranks by ``logits + beta * log(1 -
p_skip)`` where ``beta`` is the model's ``skip_weight`` (0: the logits alone), the
ranking the exported graph computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from skiprec.encoding import EncodingSpec, binary_code, encode_sessions
from skiprec.vocab import NUM_SPECIAL
from training.model import SessionEncoder

if TYPE_CHECKING:  # training.prior scores with this class: import it for types only
    from training.prior import TransitionPrior


def encoding_spec(model: SessionEncoder) -> EncodingSpec:
    """The serving encoding of a model (``EncodingSpec.for_model``)."""
    return EncodingSpec.for_model(
        model.config.backbone,
        model.config.max_seq_len,
        graded=model.config.graded_feedback,
    )


class TorchScorer:
    """Scores encoded histories with a model in eval mode; float32 [B, V] numpy.

    ``p_skip`` exists only when the model has a skip head, so a scorer is a
    ``training.evaluation.SkipScorer`` (an ``isinstance`` check) exactly when it can
    predict skips.
    """

    p_skip: Callable[[Sequence[Sequence[tuple[int, int]]], np.ndarray], np.ndarray]

    def __init__(
        self,
        model: SessionEncoder,
        batch_size: int = 512,
        prior: TransitionPrior | None = None,
    ) -> None:
        if prior is not None and prior.num_items != model.config.num_items:
            raise ValueError(
                f"transition prior has {prior.num_items} rows, the model "
                f"{model.config.num_items} items"
            )
        self.model = model
        self.spec = encoding_spec(model)
        self.batch_size = batch_size
        self.prior = prior
        if model.skip_head is not None:
            self.p_skip = self._p_skip

    def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for start in range(0, len(histories), self.batch_size):
                    item_ids, feedback = self._encode(
                        histories[start : start + self.batch_size]
                    )
                    hidden = self.model(
                        torch.from_numpy(item_ids).to(device),
                        torch.from_numpy(feedback).to(device),
                    )
                    logits = self.model.score(hidden[:, -1, :])  # [B, D] -> [B, V]
                    if self.prior is not None:
                        logits = logits + self.prior.scores(
                            torch.from_numpy(item_ids).to(device),
                            torch.from_numpy(feedback).to(device),
                        )
                    beta = self.model.skip_weight
                    if beta:
                        # + beta * log(1 - p_skip), log(1 - sigmoid(z)) = logsig(-z)
                        skip = self.model.skip_logits_all(hidden[:, -1, :])  # [B, V]
                        logits = logits + beta * F.logsigmoid(-skip)
                    logits[:, :NUM_SPECIAL] = -torch.inf
                    chunks.append(logits.float().cpu().numpy())
        finally:
            self.model.train(was_training)
        if not chunks:
            return np.zeros((0, self.model.config.num_items), dtype=np.float32)
        return np.concatenate(chunks)

    def queries(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        """The last hidden state of each history, float32 [B, D]: its inner product
        with a track's embedding is the track's logit (``SessionEncoder.score``)."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for start in range(0, len(histories), self.batch_size):
                    item_ids, feedback = self._encode(
                        histories[start : start + self.batch_size]
                    )
                    hidden = self.model(
                        torch.from_numpy(item_ids).to(device),
                        torch.from_numpy(feedback).to(device),
                    )
                    chunks.append(hidden[:, -1, :].float().cpu().numpy())
        finally:
            self.model.train(was_training)
        if not chunks:
            return np.zeros((0, self.model.config.hidden_dim), dtype=np.float32)
        return np.concatenate(chunks)

    def _p_skip(
        self, histories: Sequence[Sequence[tuple[int, int]]], targets: np.ndarray
    ) -> np.ndarray:
        """``p_skip``: p(skip | history, next = target) per history, float64 [B].

        Args:
            histories: encoded ``(item_index, feedback_code)`` events, oldest first.
            targets: int [B] vocabulary index of each history's next track (OOV_ID
                for an unknown one: the head scores the OOV embedding).
        Raises:
            ValueError: a target is outside the vocabulary or the lengths differ.
        """
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if len(targets) != len(histories):
            raise ValueError(f"{len(targets)} targets for {len(histories)} histories")
        num_items = self.model.config.num_items
        if targets.size and not (0 <= targets.min() and targets.max() < num_items):
            raise ValueError(
                f"targets must be vocabulary indices in 0..{num_items - 1}"
            )
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for start in range(0, len(histories), self.batch_size):
                    stop = start + self.batch_size
                    item_ids, feedback = self._encode(histories[start:stop])
                    hidden = self.model(
                        torch.from_numpy(item_ids).to(device),
                        torch.from_numpy(feedback).to(device),
                    )
                    chosen = torch.from_numpy(targets[start:stop, None]).to(device)
                    logits = self.model.skip_logits(hidden[:, -1, :], chosen)  # [B, 1]
                    chunks.append(torch.sigmoid(logits[:, 0]).double().cpu().numpy())
        finally:
            self.model.train(was_training)
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def _encode(
        self, histories: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``encode_sessions`` with the codes this model reads: int64 [B, T] each."""
        if not self.spec.graded:
            histories = [
                [(item, binary_code(code)) for item, code in events]
                for events in histories
            ]
        return encode_sessions(histories, self.spec)
