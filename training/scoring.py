"""``TorchScorer``: a trained ``SessionEncoder`` as an evaluation ``Scorer``.

Histories are encoded with ``skiprec.encoding.encode_sessions``, the exact function the
service uses on live sessions, and only the last position is scored, as in the exported
graph; special ids get -inf there too. So offline metrics measure what serving would
return, not a training-time shortcut. A run's transition prior (``training/prior.py``),
when it has one, is added to the logits before that, as the graph adds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from skiprec.encoding import EncodingSpec, encode_sessions
from skiprec.vocab import NUM_SPECIAL
from training.model import SessionEncoder

if TYPE_CHECKING:  # training.prior scores with this class: import it for types only
    from training.prior import TransitionPrior


def encoding_spec(model: SessionEncoder) -> EncodingSpec:
    """The serving encoding of a model (``EncodingSpec.for_model``)."""
    return EncodingSpec.for_model(model.config.backbone, model.config.max_seq_len)


class TorchScorer:
    """Scores encoded histories with a model in eval mode; float32 [B, V] numpy."""

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

    def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for start in range(0, len(histories), self.batch_size):
                    item_ids, feedback = encode_sessions(
                        histories[start : start + self.batch_size], self.spec
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
                    logits[:, :NUM_SPECIAL] = -torch.inf
                    chunks.append(logits.float().cpu().numpy())
        finally:
            self.model.train(was_training)
        if not chunks:
            return np.zeros((0, self.model.config.num_items), dtype=np.float32)
        return np.concatenate(chunks)
