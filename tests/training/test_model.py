"""SessionEncoder invariants: shapes, causality, padding invariance, feedback input."""

import pytest
import torch

from skiprec.encoding import (
    BINARY_FEEDBACK_CODES,
    FEEDBACK_CODES,
    FEEDBACK_PLAY,
    FEEDBACK_SKIP,
)
from skiprec.vocab import PAD_ID
from training.model import ModelConfig, SessionEncoder

V = 30


def _model(backbone="sasrec", feedback_input=True, seed=0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(
        num_items=V,
        backbone=backbone,
        max_seq_len=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        dropout=0.0,
        feedback_input=feedback_input,
        **overrides,
    )
    return SessionEncoder(config).eval()


def _inputs(B=3, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(3, V, (B, T), generator=g)
    feedback = torch.randint(FEEDBACK_PLAY, FEEDBACK_SKIP + 1, (B, T), generator=g)
    return items, feedback


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec"])
def test_shapes(backbone):
    model = _model(backbone)
    items, feedback = _inputs()
    hidden = model(items, feedback)
    assert hidden.shape == (3, 6, 16)
    assert model.score(hidden).shape == (3, 6, V)
    assert model.item_embeddings(items).shape == (3, 6, 16)


def test_sasrec_is_causal():
    model = _model("sasrec")
    items, feedback = _inputs()
    changed_items, changed_feedback = items.clone(), feedback.clone()
    changed_items[:, 4:] = (changed_items[:, 4:] + 1 - 3) % (V - 3) + 3
    changed_feedback[:, 4:] = 3 - changed_feedback[:, 4:]
    with torch.no_grad():
        before = model(items, feedback)
        after = model(changed_items, changed_feedback)
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_bert4rec_sees_the_future():
    model = _model("bert4rec")
    items, feedback = _inputs()
    changed = items.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 3) % (V - 3) + 3
    with torch.no_grad():
        assert not torch.allclose(
            model(items, feedback)[:, 0], model(changed, feedback)[:, 0]
        )


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec"])
def test_left_padding_does_not_change_outputs(backbone):
    model = _model(backbone)
    items, feedback = _inputs(T=5)
    padded_items = torch.cat([torch.full((3, 3), PAD_ID), items], dim=1)
    padded_feedback = torch.cat([torch.zeros(3, 3, dtype=torch.long), feedback], dim=1)
    # A row that is shorter than the others: only its real events matter.
    padded_items[1, :5] = PAD_ID
    padded_feedback[1, :5] = 0
    short_items, short_feedback = padded_items[1:2, 5:], padded_feedback[1:2, 5:]
    with torch.no_grad():
        plain = model(items, feedback)
        padded = model(padded_items, padded_feedback)
        short = model(short_items, short_feedback)
    torch.testing.assert_close(plain[[0, 2]], padded[[0, 2], 3:])
    torch.testing.assert_close(short[0], padded[1, 5:])
    assert torch.isfinite(padded).all()


def test_feedback_input_changes_the_prediction_only_when_enabled():
    items, feedback = _inputs()
    flipped = feedback.clone()
    flipped[:, -1] = 3 - flipped[:, -1]  # play <-> skip on the newest event
    with torch.no_grad():
        aware = _model(feedback_input=True)
        assert not torch.allclose(
            aware(items, feedback)[:, -1], aware(items, flipped)[:, -1]
        )
        blind = _model(feedback_input=False)
        torch.testing.assert_close(blind(items, feedback), blind(items, flipped))


def test_graded_model_embeds_every_feedback_code():
    assert _model().feedback_emb.num_embeddings == len(BINARY_FEEDBACK_CODES)
    graded = _model(graded_feedback=True)
    assert graded.feedback_emb.num_embeddings == len(FEEDBACK_CODES)
    items, feedback = _inputs()
    levels = feedback.clone()
    levels[:, -1] = FEEDBACK_CODES["level0"]  # the newest event: skipped at the start
    with torch.no_grad():
        assert not torch.allclose(
            graded(items, feedback)[:, -1], graded(items, levels)[:, -1]
        )


def test_skip_head_shapes_and_the_all_items_form_agree():
    model = _model(skip_head=True)
    items, feedback = _inputs()
    with torch.no_grad():
        last = model(items, feedback)[:, -1]  # [B, D]
        candidates = torch.tensor([[3, 4], [5, 5], [29, 0]])
        picked = model.skip_logits(last, candidates)
        everything = model.skip_logits_all(last)
    assert picked.shape == (3, 2) and everything.shape == (3, V)
    torch.testing.assert_close(picked, everything.gather(1, candidates))
    # The session part is shared by every candidate; the candidate part differs.
    assert not torch.allclose(picked[0, 0], picked[0, 1])
    assert model.skip_weight == 0.0
    model.set_skip_weight(0.5)
    assert model.skip_weight == 0.5
    assert "skip_head.skip_weight" in model.state_dict()


def test_a_model_without_skip_head_refuses_skip_logits():
    model = _model()
    assert model.skip_head is None and model.skip_weight == 0.0
    with pytest.raises(ValueError, match="no skip head"):
        model.skip_logits(torch.zeros(1, 16), torch.tensor([[3]]))
