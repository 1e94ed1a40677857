"""TorchScorer: the serving encoding, last position only, specials never ranked."""

import numpy as np
import pytest
import torch

from skiprec.encoding import FEEDBACK_CODES, FEEDBACK_MASK, FEEDBACK_PLAY, FEEDBACK_SKIP
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


def _head_model(**overrides):
    torch.manual_seed(0)
    config = ModelConfig(
        num_items=V,
        max_seq_len=6,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        feedback_input=True,
        skip_head=True,
        **overrides,
    )
    return SessionEncoder(config).eval()


def test_p_skip_is_the_heads_probability_of_each_target():
    model = _head_model()
    targets = np.array([4, 9, 24])
    p_skip = TorchScorer(model, batch_size=2).p_skip(HISTORIES, targets)
    assert p_skip.shape == (3,) and ((0 < p_skip) & (p_skip < 1)).all()
    for row, history in enumerate(HISTORIES):
        events = history[-model.config.max_seq_len :]
        items = torch.tensor([[i for i, _ in events]])
        feedback = torch.tensor([[c for _, c in events]])
        with torch.no_grad():
            last = model(items, feedback)[:, -1]
            logit = model.skip_logits(last, torch.tensor([[targets[row]]]))
        assert p_skip[row] == pytest.approx(float(torch.sigmoid(logit)), abs=1e-6)


def test_only_a_model_with_a_head_is_a_skip_scorer_and_bad_targets_raise():
    # training.evaluation.SkipScorer is checked by the presence of p_skip.
    assert not hasattr(TorchScorer(_model("sasrec")), "p_skip")
    scorer = TorchScorer(_head_model())
    assert hasattr(scorer, "p_skip")
    with pytest.raises(ValueError, match="2 targets for 3 histories"):
        scorer.p_skip(HISTORIES, np.array([3, 4]))
    with pytest.raises(ValueError, match="vocabulary indices"):
        scorer.p_skip(HISTORIES, np.array([3, 4, V]))


def test_skip_weight_ranks_by_logits_plus_beta_log_one_minus_p_skip():
    model = _head_model()
    plain = TorchScorer(model).score(HISTORIES)
    model.set_skip_weight(2.0)
    weighted = TorchScorer(model).score(HISTORIES)
    everything = np.arange(V)
    p_skip = np.stack(
        [TorchScorer(model).p_skip([history] * V, everything) for history in HISTORIES]
    )  # [B, V]
    expected = plain + 2.0 * np.log1p(-p_skip)
    np.testing.assert_allclose(
        weighted[:, NUM_SPECIAL:], expected[:, NUM_SPECIAL:], rtol=1e-5, atol=1e-5
    )
    assert np.isneginf(weighted[:, :NUM_SPECIAL]).all()


def test_binary_model_reads_graded_histories_as_play_skip():
    model = _model("sasrec")
    codes = FEEDBACK_CODES
    graded = [[(5, codes["level3"]), (7, codes["level0"]), (9, codes["level1"])]]
    binary = [[(5, FEEDBACK_PLAY), (7, FEEDBACK_SKIP), (9, FEEDBACK_SKIP)]]
    scorer = TorchScorer(model)
    assert not scorer.spec.graded
    np.testing.assert_array_equal(scorer.score(graded), scorer.score(binary))


def test_graded_model_reads_the_levels():
    model = _head_model(graded_feedback=True)
    scorer = TorchScorer(model)
    assert scorer.spec.graded
    late = [[(5, FEEDBACK_CODES["level2"])]]
    start = [[(5, FEEDBACK_CODES["level3"])]]
    assert not np.allclose(scorer.score(late), scorer.score(start))
