"""TorchScorer: the serving encoding, last position only, specials never ranked."""

import numpy as np
import pytest
import torch

from skiprec.encoding import FEEDBACK_MASK, FEEDBACK_PLAY, FEEDBACK_SKIP
from skiprec.vocab import MASK_ID, NUM_SPECIAL
from training.model import ModelConfig, SessionEncoder
from training.scoring import TorchScorer

V = 25
HISTORIES = [
    [(5, FEEDBACK_PLAY)],
    [(3, FEEDBACK_PLAY), (7, FEEDBACK_SKIP), (1, FEEDBACK_PLAY)],  # 1 = OOV
    [(i, FEEDBACK_PLAY) for i in range(3, 15)],  # longer than max_seq_len
]


def _model(backbone):
    torch.manual_seed(0)
    config = ModelConfig(
        num_items=V,
        backbone=backbone,
        max_seq_len=6,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        feedback_input=True,
    )
    return SessionEncoder(config)


def _by_hand(model, history, append_mask):
    events = list(history) + ([(MASK_ID, FEEDBACK_MASK)] if append_mask else [])
    events = events[-model.config.max_seq_len :]
    items = torch.tensor([[i for i, _ in events]])
    feedback = torch.tensor([[c for _, c in events]])
    with torch.no_grad():
        return model.score(model(items, feedback)[:, -1])[0].numpy()


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec"])
def test_torch_scorer_matches_single_session_forward(backbone):
    model = _model(backbone).train()
    scores = TorchScorer(model, batch_size=2).score(HISTORIES)
    assert scores.shape == (3, V) and scores.dtype == np.float32
    assert np.isneginf(scores[:, :NUM_SPECIAL]).all()
    model.eval()
    for row, history in enumerate(HISTORIES):
        expected = _by_hand(model, history, append_mask=backbone == "bert4rec")
        np.testing.assert_allclose(
            scores[row, NUM_SPECIAL:], expected[NUM_SPECIAL:], atol=1e-5
        )


def test_torch_scorer_restores_training_mode_and_handles_empty_input():
    model = _model("sasrec").train()
    scorer = TorchScorer(model)
    assert scorer.score([]).shape == (0, V)
    scorer.score(HISTORIES[:1])
    assert model.training
