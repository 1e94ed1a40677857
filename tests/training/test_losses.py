"""Losses on hand-computed toy tensors (V = 3 specials + a few tracks)."""

import math

import pytest
import torch

from skiprec.vocab import OOV_ID, PAD_ID
from training.losses import (
    authors_code_contrastive_loss,
    full_softmax_loss,
    log_expected_counts,
    sampled_softmax_loss,
    skip_bce_loss,
    skip_contrastive_loss,
    unlikelihood_loss,
)

TAU = 0.5  # moderate, so float32 rounding stays far below the tolerance


def test_full_softmax_loss_ignores_pad_targets_and_special_logits():
    # Specials (first 3 columns) get huge logits; they must not enter the softmax.
    logits = torch.tensor([[9.0, 9.0, 9.0, 1.0, 2.0], [9.0, 9.0, 9.0, 5.0, -5.0]])
    targets = torch.tensor([3, PAD_ID])
    expected = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(2.0)))
    assert full_softmax_loss(logits, targets).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_full_softmax_loss_rejects_special_targets():
    with pytest.raises(ValueError, match="special"):
        full_softmax_loss(torch.zeros(1, 5), torch.tensor([OOV_ID]))


def test_full_softmax_loss_without_targets_is_zero_and_differentiable():
    logits = torch.randn(2, 3, 6, requires_grad=True)
    loss = full_softmax_loss(logits, torch.full((2, 3), PAD_ID))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None


def test_sampled_softmax_loss_by_hand_removes_accidental_hits():
    # D = 1 so every score is a product. Tracks 3..6 have embeddings 1, 2, -1, 0.
    table = torch.tensor([[0.0], [0.0], [0.0], [1.0], [2.0], [-1.0], [0.0]])
    hidden = torch.tensor([[1.0], [2.0]])
    targets = torch.tensor([3, 4])
    negatives = torch.tensor([5, 3])  # row 0 draws its own target: an accidental hit
    hard = torch.tensor([[6, PAD_ID], [PAD_ID, PAD_ID]])
    loss = sampled_softmax_loss(hidden, targets, table, negatives, hard)
    # Row 0: target 3 (s=1); candidates 4 (2), 5 (-1), 6 (0); 3 twice removed.
    row0 = math.log(math.exp(1) + math.exp(2) + math.exp(-1) + math.exp(0)) - 1
    # Row 1: target 4 (s=4); candidates 3 (2), 5 (-2), 3 (2) from the negatives.
    row1 = math.log(math.exp(4) + 2 * math.exp(2) + math.exp(-2)) - 4
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def _sampled_toy():
    """The accidental-hit example above: tracks 3..6 with embeddings 1, 2, -1, 0."""
    table = torch.tensor([[0.0], [0.0], [0.0], [1.0], [2.0], [-1.0], [0.0]])
    hidden = torch.tensor([[1.0], [2.0]])
    targets = torch.tensor([3, 4])
    negatives = torch.tensor([5, 3])
    hard = torch.tensor([[6, PAD_ID], [PAD_ID, PAD_ID]])
    return hidden, targets, table, negatives, hard


def test_sampled_softmax_loss_with_log_q_by_hand():
    # Expected counts Q of tracks 3..6: 0.5, 2, 1, 4 (specials: never candidates).
    log_q = torch.log(torch.tensor([1.0, 1.0, 1.0, 0.5, 2.0, 1.0, 4.0]))
    loss = sampled_softmax_loss(*_sampled_toy(), log_q=log_q)
    lq = {3: math.log(0.5), 4: math.log(2.0), 5: 0.0}
    # Row 0: target 3 (1 - log 0.5); in-batch 4 (2 - log 2); sampled 5 (-1 - 0);
    # sampled 3 is an accidental hit; hard 6 (0, not sampled: never corrected).
    pos0 = 1 - lq[3]
    row0 = math.log(math.exp(pos0) + math.exp(2 - lq[4]) + math.exp(-1) + 1) - pos0
    # Row 1: target 4 (4 - log 2); in-batch 3 (2 - log 0.5); sampled 5 (-2), 3 again.
    pos1 = 4 - lq[4]
    row1 = (
        math.log(math.exp(pos1) + 2 * math.exp(2 - lq[3]) + math.exp(-2 - lq[5])) - pos1
    )
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_sampled_softmax_loss_without_in_batch_negatives_by_hand():
    loss = sampled_softmax_loss(*_sampled_toy(), in_batch=False)
    # Row 0: target 3 (1); sampled 5 (-1), 3 removed; hard 6 (0).
    row0 = math.log(math.exp(1) + math.exp(-1) + math.exp(0)) - 1
    # Row 1: target 4 (4); sampled 5 (-2) and 3 (2); no hard negative.
    row1 = math.log(math.exp(4) + math.exp(-2) + math.exp(2)) - 4
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_sampled_softmax_loss_ignores_a_constant_log_q_without_hard_negatives():
    # Uniform negatives without in-batch ones have log Q = log(N / V'): a constant,
    # which cancels, so they need no correction.
    args = _sampled_toy()[:4]
    plain = sampled_softmax_loss(*args)
    shifted = sampled_softmax_loss(*args, log_q=torch.full((7,), 3.7))
    assert shifted.item() == pytest.approx(plain.item(), rel=1e-6)
    # Hard negatives are in every row's set (count 1): there the scale matters.
    hard = sampled_softmax_loss(*_sampled_toy(), log_q=torch.full((7,), 3.7))
    assert hard.item() != pytest.approx(sampled_softmax_loss(*_sampled_toy()).item())


def _explicit_sampled_softmax(hidden, targets, table, negatives, hard, log_q):
    """The formula of ``sampled_softmax_loss`` term by term: every shared candidate
    its own column (repeats too), accidental hits masked, the positive first."""
    shared = torch.cat([targets, negatives])
    positive = (hidden * table[targets]).sum(-1, keepdim=True) - log_q[targets, None]
    logits = hidden @ table[shared].T - log_q[shared]
    logits = logits.masked_fill(shared[None, :] == targets[:, None], -torch.inf)
    hard_logits = (hidden[:, None, :] * table[hard]).sum(-1)
    unused = (hard == PAD_ID) | (hard == targets[:, None])
    hard_logits = hard_logits.masked_fill(unused, -torch.inf)
    logits = torch.cat([positive, logits, hard_logits], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive.squeeze(1)).mean()


def test_sampled_softmax_loss_and_gradients_equal_the_explicit_candidate_sum():
    # Repeated targets and negatives, accidental hits and hard negatives: each
    # distinct candidate once with log(multiplicity), the positive written into
    # its target's column, must be the same loss and gradients to float rounding.
    generator = torch.Generator().manual_seed(0)
    vocab_size, dim, rows = 40, 8, 30
    table = torch.randn(vocab_size, dim, generator=generator, requires_grad=True)
    hidden = torch.randn(rows, dim, generator=generator, requires_grad=True)
    targets = torch.randint(3, 15, (rows,), generator=generator)
    negatives = torch.randint(3, vocab_size, (50,), generator=generator)
    hard = torch.randint(0, vocab_size, (rows, 4), generator=generator)
    log_q = torch.randn(vocab_size, generator=generator)
    loss = sampled_softmax_loss(hidden, targets, table, negatives, hard, log_q=log_q)
    expected = _explicit_sampled_softmax(hidden, targets, table, negatives, hard, log_q)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(loss, (hidden, table))
    expected_grads = torch.autograd.grad(expected, (hidden, table))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_log_expected_counts_by_hand():
    # N = 4 negatives from p, and M - 1 = 3 other rows' targets distributed as q.
    p = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.25, 0.25])
    q = torch.tensor([0.0, 0.0, 0.0, 0.2, 0.8, 0.0])
    expected = [4 * 0.5 + 3 * 0.2, 4 * 0.25 + 3 * 0.8, 4 * 0.25]
    got = log_expected_counts(p, 4, q, 3)
    assert got[3:].tolist() == pytest.approx([math.log(v) for v in expected])
    assert torch.isneginf(got[:3]).all()  # never drawn
    assert log_expected_counts(p, 4)[3:].tolist() == pytest.approx(
        [math.log(2.0), 0.0, 0.0], abs=1e-7
    )


def test_unlikelihood_loss_by_hand():
    logits = torch.tensor([[7.0, 7.0, 7.0, 0.0, math.log(3.0)], [0.0] * 5])
    negative_targets = torch.tensor([4, PAD_ID])
    # p(track 4) = 3 / (1 + 3) among tracks only -> -log(1 - 3/4).
    expected = -math.log(1 - 0.75)
    loss = unlikelihood_loss(logits, negative_targets)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _toy():
    """Two sessions (B=2), T=3 positions, S=2 skip slots, D=2.

    Session 0: anchor at t=0 (unit x), positive unit x, skipped tracks unit y and -x;
    t=1, t=2 are not anchors (padding or skipped). Session 1 has no skips at all.
    """
    anchors = torch.tensor(
        [
            [[1.0, 0.0], [5.0, 5.0], [-3.0, 1.0]],
            [[0.0, 2.0], [1.0, 1.0], [4.0, 4.0]],
        ]
    )
    positives = torch.tensor(
        [
            [[3.0, 0.0], [1.0, 2.0], [0.0, 0.0]],
            [[0.0, 1.0], [1.0, -1.0], [0.0, 0.0]],
        ]
    )
    negatives = torch.tensor([[[0.0, 2.0], [-1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    anchor_mask = torch.tensor([[True, False, False], [True, True, False]])
    negative_mask = torch.tensor([[True, True], [False, False]])
    return anchors, positives, negatives, anchor_mask, negative_mask


def _loss(*args, **kwargs):
    return skip_contrastive_loss(*args, temperature=TAU, **kwargs).item()


def test_skip_contrastive_loss_by_hand():
    # Only session 0's anchor counts: cos(a, p) = 1, cos(a, y) = 0, cos(a, -x) = -1.
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    assert _loss(*_toy()) == pytest.approx(expected, rel=1e-5)


def test_skip_contrastive_loss_uses_only_own_session_negatives():
    anchors, positives, negatives, anchor_mask, negative_mask = _toy()
    before = _loss(anchors, positives, negatives, anchor_mask, negative_mask)
    # Session 1 has no skips: whatever sits in its (masked) slots is irrelevant ...
    other = negatives.clone()
    other[1] = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    assert _loss(anchors, positives, other, anchor_mask, negative_mask) == before
    # ... while session 0's own skipped tracks drive its loss.
    own = negatives.clone()
    own[0, 0] = torch.tensor([1.0, 0.0])
    assert _loss(anchors, positives, own, anchor_mask, negative_mask) > before + 0.5


def test_skip_contrastive_loss_masks_padding():
    anchors, positives, negatives, anchor_mask, negative_mask = _toy()
    negative_mask = negative_mask.clone()
    negative_mask[0, 1] = False  # slot 1 of session 0 becomes padding
    before = _loss(anchors, positives, negatives, anchor_mask, negative_mask)
    moved = negatives.clone()
    moved[0, 1] = torch.tensor([7.0, 0.1])
    anchors_moved = anchors.clone()
    anchors_moved[0, 2] = torch.tensor([0.0, -9.0])  # a non-anchor (padded) position
    after = _loss(anchors_moved, positives, moved, anchor_mask, negative_mask)
    assert after == before
    assert before == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)


def test_skip_contrastive_loss_without_skips_is_zero():
    anchors, positives, negatives, anchor_mask, _ = _toy()
    loss = skip_contrastive_loss(
        anchors.requires_grad_(),
        positives,
        negatives,
        anchor_mask,
        torch.zeros(2, 2, dtype=torch.bool),
    )
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(anchors.grad).all()


def test_skip_contrastive_loss_gradient_reaches_item_embeddings():
    table = torch.nn.Embedding(6, 2)
    with torch.no_grad():
        table.weight.copy_(
            torch.tensor([[0, 0], [0, 0], [0, 0], [1, 0], [1, 1], [0, 1.0]])
        )
    anchors = table(torch.tensor([[3, 4, 0], [5, 4, 0]]))  # P1's item-embedding anchor
    positives = table(torch.tensor([[4, 0, 0], [4, 0, 0]]))
    negatives = table(torch.tensor([[5, 0], [0, 0]]))
    loss = skip_contrastive_loss(
        anchors,
        positives,
        negatives,
        torch.tensor([[True, False, False], [True, False, False]]),
        torch.tensor([[True, False], [False, False]]),
        temperature=TAU,
    )
    loss.backward()
    grad = table.weight.grad.abs().sum(dim=1)
    assert grad[3] > 0 and grad[4] > 0 and grad[5] > 0  # anchor, positive, negative
    assert grad[:3].sum() == 0  # padding rows receive nothing


def test_skip_contrastive_loss_per_anchor_mask_drops_the_positive_track():
    # B=1, T=2, S=2. Anchor t=0: a = x, positive x (cos 1); negatives x (the same
    # track as the positive, cos 1) and -x (cos -1). Anchor t=1: a = y, positive y,
    # whose only negative slot left is masked too: it contributes nothing.
    x, y = [1.0, 0.0], [0.0, 1.0]
    anchors = torch.tensor([[x, y]])
    positives = torch.tensor([[x, y]])
    negatives = torch.tensor([[x, [-1.0, 0.0]]])
    anchor_mask = torch.tensor([[True, True]])
    per_anchor = torch.tensor([[[False, True], [False, False]]])  # [B, T, S]
    masked = _loss(anchors, positives, negatives, anchor_mask, per_anchor)
    # Only t=0 with the -x negative: -log(e^2 / (e^2 + e^-2)) = log(1 + e^-4).
    assert masked == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)
    # Unmasked ([B, S]), the positive's twin adds e^2: log(2 + e^-4) at t=0, which
    # can never fall below log 2; at t=1 (y . x = 0, y . -x = 0): log(e^2 + 2) - 2.
    kept = _loss(anchors, positives, negatives, anchor_mask, torch.ones(1, 2) > 0)
    t1 = math.log(math.exp(2) + 2) - 2
    assert kept == pytest.approx((math.log(2 + math.exp(-4)) + t1) / 2, rel=1e-5)


def test_skip_contrastive_loss_per_anchor_mask_equals_row_mask_when_all_kept():
    anchors, positives, negatives, anchor_mask, negative_mask = _toy()
    per_anchor = negative_mask[:, None, :].expand(-1, 3, -1)
    assert _loss(anchors, positives, negatives, anchor_mask, per_anchor) == _loss(
        *_toy()
    )


def _authors_toy():
    """B=2 rows, T=2, W=3 slots, D=2. Row 0: anchor t=0 (a = x, positive x), skips
    y and -y; row 1: anchor t=1 (a = y, positive x), one skip y."""
    x, y, zero = [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]
    anchors = torch.tensor([[x, [5.0, 5.0]], [[3.0, -1.0], y]])
    positives = torch.tensor([[x, zero], [zero, x]])
    negatives = torch.tensor([[y, [0.0, -1.0]], [y, zero]])
    anchor_mask = torch.tensor([[True, False], [False, True]])
    negative_mask = torch.tensor([[True, True], [True, False]])
    return anchors, positives, negatives, anchor_mask, negative_mask


def test_authors_code_contrastive_loss_by_hand():
    rows = torch.tensor([[1, 0], [0, 0]])  # (0,0) sees row 1's skips, (1,1) row 0's
    loss = authors_code_contrastive_loss(
        *_authors_toy(), rows, num_slots=3, temperature=TAU
    ).item()
    # (0,0): cos(x, x) = 1 -> 2; row 1: y (cos 0 -> e^0) and W - k = 3 - 1 = 2 zero
    # slots (e^0 each): log(e^2 + 1 + 2) - 2.
    l00 = math.log(math.exp(2) + 3) - 2
    # (1,1): cos(y, x) = 0 -> 0; row 0: y (cos 1 -> e^2), -y (e^-2), 3 - 2 = 1 zero.
    l11 = math.log(1 + math.exp(2) + math.exp(-2) + 1)
    # Mean over all B*W = 6 query rows; the 4 non-anchor rows add log(1 + W) each.
    expected = (l00 + l11 + 4 * math.log(4)) / 6
    assert loss == pytest.approx(expected, rel=1e-5)


def test_authors_code_contrastive_loss_full_row_has_no_padding_term():
    anchors, positives, negatives, anchor_mask, negative_mask = _authors_toy()
    rows = torch.tensor([[0, 0], [0, 0]])  # both anchors see row 0 (k = 2 = W)
    loss = authors_code_contrastive_loss(
        anchors, positives, negatives, anchor_mask, negative_mask, rows, 2, TAU
    ).item()
    l00 = math.log(math.exp(2) + math.exp(0) + math.exp(0)) - 2  # y, -y: cos 0, 0
    l11 = math.log(1 + math.exp(2) + math.exp(-2))
    assert loss == pytest.approx((l00 + l11 + 2 * math.log(3)) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="num_slots"):
        authors_code_contrastive_loss(
            anchors, positives, negatives, anchor_mask, negative_mask, rows, 1, TAU
        )


def test_authors_code_contrastive_loss_gradient_only_through_anchors():
    anchors, positives, negatives, anchor_mask, negative_mask = _authors_toy()
    anchors.requires_grad_()
    rows = torch.tensor([[1, 0], [0, 0]])
    authors_code_contrastive_loss(
        anchors, positives, negatives, anchor_mask, negative_mask, rows, 3, TAU
    ).backward()
    assert anchors.grad[anchor_mask].abs().sum() > 0
    assert anchors.grad[~anchor_mask].abs().sum() == 0


def test_skip_bce_loss_by_hand():
    # z = 0, skipped: -log(1/2) = log 2; z = log 3 (p = 3/4), played: -log(1/4) =
    # log 4; the third position has no next track and is left out.
    logits = torch.tensor([0.0, math.log(3.0), -2.0], requires_grad=True)
    labels = torch.tensor([True, False, True])
    mask = torch.tensor([True, True, False])
    loss = skip_bce_loss(logits, labels, mask)
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    loss.backward()
    # d/dz = (sigmoid(z) - y) / M: (1/2 - 1) / 2, (3/4 - 0) / 2, 0 (masked out).
    torch.testing.assert_close(logits.grad, torch.tensor([-0.25, 0.375, 0.0]))


def test_skip_bce_loss_is_finite_for_extreme_logits_and_zero_without_positions():
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)
    labels = torch.tensor([[False, True]])
    loss = skip_bce_loss(logits, labels, torch.ones_like(labels))
    assert loss.item() == pytest.approx(200.0)  # softplus(200) and softplus(200)
    empty = skip_bce_loss(logits, labels, torch.zeros_like(labels))
    assert empty.item() == 0.0 and empty.requires_grad
