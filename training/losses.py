"""Training losses: pure functions of representations, scores and targets.

Dimension legend: B batch, T sequence length, D hidden dim, M selected positions,
N sampled negatives, H hard negatives per position, S skipped tracks per session,
V item vocabulary (tracks + specials).

Every loss averages over the positions it applies to and returns a scalar that is 0
(still attached to the graph) when there is none, so a batch without skips or targets
never produces NaN. ``PAD_ID`` marks "no target here"; the special ids (PAD, OOV, MASK)
are never valid targets and never compete in a softmax, as in serving, where the graph
sets them to -inf before top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from skiprec.vocab import NUM_SPECIAL, PAD_ID


def _mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; 0 with a gradient path when nothing is."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _without_specials(logits: Tensor) -> Tensor:
    """[..., V] -> the same with the special ids' logits at -inf."""
    return logits.index_fill(
        -1, torch.arange(NUM_SPECIAL, device=logits.device), -torch.inf
    )


def full_softmax_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Next-track cross-entropy over the whole catalogue.

        L = mean_{i: y_i != PAD} [ -z_{i,y_i} + log sum_{j >= NUM_SPECIAL} exp z_{i,j} ]

    Args:
        logits: [..., V] scores against the item table (``model.score(hidden)``).
        targets: int64 [...] track index, ``PAD_ID`` where there is no target.
    Raises:
        ValueError: a target is a special id other than PAD (a batching bug).
    """
    valid = targets != PAD_ID
    if bool(((targets < NUM_SPECIAL) & valid).any()):
        raise ValueError(
            "targets contain special ids (OOV/MASK); only tracks are valid"
        )
    log_probs = torch.log_softmax(_without_specials(logits), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=NUM_SPECIAL).unsqueeze(-1))
    return _mean(-picked.squeeze(-1), valid)


def sampled_softmax_loss(
    hidden: Tensor,
    targets: Tensor,
    item_table: Tensor,
    negatives: Tensor,
    hard_negatives: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each target against uniform, in-batch and hard negatives.

    For large catalogues where [M, V] logits do not fit. Row i competes its target
    y_i against C = {the other rows' targets} U {N uniform tracks} U {its H hard
    negatives}; a candidate equal to y_i (an accidental hit) is removed:

        L = mean_i [ log( exp s(i, y_i) + sum_{c in C_i, c != y_i} exp s(i, c) )
                     - s(i, y_i) ]
        s(i, c) = h_i . e_c

    No logQ correction: uniform negatives have the same sampling probability for every
    track, so the correction is a constant that cancels in the softmax. In-batch
    targets are drawn in proportion to popularity and are left uncorrected on purpose:
    they act as popularity-weighted hard negatives, which penalises a popularity bias.

    Args:
        hidden: [M, D] outputs at the positions that have a target.
        targets: int64 [M] track indices (no PAD; select positions first).
        item_table: [V, D] output embeddings (tied with the input table).
        negatives: int64 [N] uniform track indices shared by the batch.
        hard_negatives: int64 [M, H] per-row extra negatives (e.g. the session's
            skipped tracks), ``PAD_ID`` where unused.
    """
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    positive = (hidden * item_table[targets]).sum(-1, keepdim=True)  # [M, 1]
    shared = torch.cat([targets, negatives])  # [M + N]
    shared_logits = hidden @ item_table[shared].T  # [M, D] @ [D, M+N] -> [M, M+N]
    shared_logits = shared_logits.masked_fill(
        shared[None, :] == targets[:, None], -torch.inf
    )
    parts = [positive, shared_logits]
    if hard_negatives is not None:
        # [M, 1, D] * [M, H, D] -> [M, H]
        hard_logits = (hidden[:, None, :] * item_table[hard_negatives]).sum(-1)
        unused = (hard_negatives == PAD_ID) | (hard_negatives == targets[:, None])
        parts.append(hard_logits.masked_fill(unused, -torch.inf))
    logits = torch.cat(parts, dim=1)
    return (torch.logsumexp(logits, dim=1) - positive.squeeze(1)).mean()


def skip_contrastive_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor,
    anchor_mask: Tensor,
    negative_mask: Tensor,
    temperature: float = 0.1,
    compat: bool = False,
) -> Tensor:
    """InfoNCE pulling a played position towards the next played track and away from
    the tracks skipped in the same session (Seshadri & Knees, arXiv 2309.11623;
    Seshadri, Shashaani & Knees, arXiv 2409.07367).

    With cosine similarity sim and temperature tau, for each anchor a_{b,t}:

        l_{b,t} = -log( exp(sim(a, p)/tau)
                  / (exp(sim(a, p)/tau) + sum_s m_{b,s} exp(sim(a, n_{b,s})/tau)) )

    averaged over anchors with ``anchor_mask`` true and at least one negative
    (an anchor in a session without skips has nothing to contrast and contributes
    nothing). ``compat=True`` reproduces the authors' public code instead: negatives are
    taken from the previous session in the batch (``roll(1, dim=0)``) and every slot,
    padded ones included, counts as a negative (a zero-padded slot has similarity 0, so
    it adds exp(0) = 1 to the denominator).

    Args:
        anchors: [B, T, D] model outputs at each position (or the raw item embeddings).
        positives: [B, T, D] embedding of the next played track after t.
        negatives: [B, S, D] embeddings of the session's skipped tracks.
        anchor_mask: bool [B, T] real, non-skipped position with a later played track.
        negative_mask: bool [B, S] slot holds a real skipped track.
        temperature: tau.
        compat: reproduce the reference implementation (see above).
    """
    if compat:
        negatives = negatives.roll(1, dims=0)
        negative_mask = torch.ones_like(negative_mask)
    # Cosine similarity; F.normalize's eps keeps a zero (padding) vector at 0.
    a = F.normalize(anchors, dim=-1)
    pos = (a * F.normalize(positives, dim=-1)).sum(-1) / temperature  # [B, T]
    # [B, T, D] @ [B, D, S] -> [B, T, S]
    neg = (a @ F.normalize(negatives, dim=-1).transpose(1, 2)) / temperature
    neg = neg.masked_fill(~negative_mask[:, None, :], -torch.inf)
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)  # [B, T, 1 + S]
    losses = torch.logsumexp(logits, dim=-1) - pos
    use = anchor_mask & negative_mask.any(dim=1, keepdim=True)
    # Unused rows can hold -inf - (-inf); zero them before the masked mean.
    return _mean(torch.where(use, losses, 0.0), use)


def unlikelihood_loss(logits: Tensor, negative_targets: Tensor) -> Tensor:
    """Push down a track the listener skipped at this point: -log(1 - p(skipped track)).

        L = mean_{i: n_i != PAD} -log(1 - softmax(z_i)_{n_i})
          = mean_i [ logsumexp_j z_{i,j} - logsumexp_{j != n_i} z_{i,j} ]

    computed in the second form, which never takes log of a difference near 0.
    Specials are excluded from the softmax as in :func:`full_softmax_loss`.

    Args:
        logits: [..., V]; negative_targets: int64 [...] skipped track, PAD where none.
    """
    valid = negative_targets != PAD_ID
    logits = _without_specials(logits)
    index = negative_targets.clamp(min=NUM_SPECIAL).unsqueeze(-1)
    rest = logits.scatter(-1, index, -torch.inf)
    losses = torch.logsumexp(logits, dim=-1) - torch.logsumexp(rest, dim=-1)
    return _mean(torch.where(valid, losses, 0.0), valid)


def skip_bce_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy of the skip head on the tracks that actually came next.

        L = mean_{i: m_i} -[ y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i)) ]
          = mean_{i: m_i} [ softplus(z_i) - y_i z_i ]

    computed from logits (``binary_cross_entropy_with_logits``, the second form),
    which stays finite for any z where ``log(sigmoid(z))`` would underflow.

    Args:
        logits: [...] skip logits of the next track at each position.
        labels: bool [...] whether that track was skipped.
        mask: bool [...] positions that have a next track.
    """
    losses = F.binary_cross_entropy_with_logits(
        logits, labels.to(logits.dtype), reduction="none"
    )
    return _mean(torch.where(mask, losses, 0.0), mask)
