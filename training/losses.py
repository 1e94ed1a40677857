"""Training losses: pure functions of representations, scores and targets.

Dimension legend: B batch, T sequence length, D hidden dim, M selected positions,
N sampled negatives, H hard negatives per position, S skipped tracks per session,
V item vocabulary (tracks + specials), W padded session width of the authors' code.

Every loss averages over the positions it applies to and returns a scalar that is 0
(still attached to the graph) when there is none, so a batch without skips or targets
never produces NaN; the one exception is :func:`authors_code_contrastive_loss`, which
reproduces a reference implementation's averaging on purpose. ``PAD_ID`` marks "no
target here"; the special ids (PAD, OOV, MASK) are never valid targets and never
compete in a softmax, as in serving, where the graph sets them to -inf before top-k.
"""

from __future__ import annotations

import math

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
    *,
    in_batch: bool = True,
    log_q: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each target against sampled, in-batch and hard negatives.

    For large catalogues where [M, V] logits do not fit. Row i competes its target
    y_i against C_i = {the other rows' targets (``in_batch``)} U {N sampled tracks} U
    {its H hard negatives}; a candidate equal to y_i (an accidental hit) is removed:

        L = mean_i [ log( exp s'(i, y_i) + sum_{c in C_i, c != y_i} exp s'(i, c) )
                     - s'(i, y_i) ]
        s(i, c) = h_i . e_c
        s'(i, c) = s(i, c) - log Q(c)   for the target and the sampled candidates
        s'(i, c) = s(i, c)              for the hard negatives (not sampled)

    Log-Q correction (Bengio & Senecal 2008; Yi et al., RecSys 2019, for in-batch
    negatives): a candidate drawn in proportion to its popularity competes more often
    than the full softmax would weigh it, which teaches the model to score popular
    tracks down. Subtracting the log of its expected count Q(c) among a row's
    candidates (``log_q``, from :func:`log_expected_counts`) makes the sampled softmax
    a consistent estimate of the full one; the target is corrected too (it is one of
    the sampled candidates of the other rows, and the softmax compares like with
    like). A hard negative is in every row's set: its count is 1, its log 0, which is
    why ``log_q`` is a log *count*, not a log probability; without hard negatives a
    constant added to ``log_q`` cancels, so uniform negatives alone need no
    correction (``log_q`` None). Without it, in-batch targets (drawn in proportion to
    popularity) act as popularity-weighted hard negatives, which penalises a
    popularity bias: the behaviour of every run trained before the correction.

    Args:
        hidden: [M, D] outputs at the positions that have a target.
        targets: int64 [M] track indices (no PAD; select positions first).
        item_table: [V, D] output embeddings (tied with the input table).
        negatives: int64 [N] sampled track indices shared by the batch.
        hard_negatives: int64 [M, H] per-row extra negatives (e.g. the session's
            skipped tracks), ``PAD_ID`` where unused.
        in_batch: the other rows' targets are negatives too.
        log_q: [V] log expected count of each track among a row's sampled and
            in-batch candidates; None = no correction.
    """
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    shared = torch.cat([targets, negatives]) if in_batch else negatives  # [M' + N]
    # Each distinct candidate once, with its multiplicity k among the shared ones:
    # k exp(s) = exp(s + log k), the same sum over fewer columns (targets repeat
    # within a batch, popular negatives are drawn again), so the [M, U] matrices
    # that are most of a step's work on the CPU shrink. The targets are columns
    # too (k = 0, log k = -inf, when they are not shared candidates), so that each
    # row's target has a column: column[i] (``inverse[:M]``).
    unique, inverse = torch.unique(
        torch.cat([targets, shared]), return_inverse=True
    )  # [U], [M + M' + N]
    column = inverse[: targets.shape[0]]  # [M]
    counts = torch.bincount(inverse[targets.shape[0] :], minlength=unique.shape[0])
    bias = counts.to(hidden.dtype).log()
    # One gather from the [V, D] table, whose backward is a dense [V, D] gradient
    # (a zero fill and a sum of 14.7 MB at 57k tracks); the targets' rows come
    # from the gathered ones.
    candidates = item_table[unique]  # [U, D]
    positive = (hidden * candidates[column]).sum(-1)  # [M]
    if log_q is not None:
        positive = positive - log_q[targets]
        bias = bias - log_q[unique]
    # bias + [M, D] @ [D, U] -> [M, U], the bias added inside the matrix product
    logits = torch.addmm(bias[None, :], hidden, candidates.T)
    # Row i's target column holds its accidental hits (y_i among the shared
    # candidates, removed) plus log k: it becomes the positive, exactly once.
    # In place and then a fused cross-entropy: no [M, U] mask, no concatenated
    # copy, and one pass each way through the softmax instead of logsumexp's
    # separate subtract, exp and multiply (addmm's backward does not read its
    # output, so writing into it is safe for autograd).
    rows = torch.arange(targets.shape[0], device=targets.device)
    logits.index_put_((rows, column), positive)
    if hard_negatives is not None:
        # [M, 1, D] * [M, H, D] -> [M, H]
        hard_logits = (hidden[:, None, :] * item_table[hard_negatives]).sum(-1)
        unused = (hard_negatives == PAD_ID) | (hard_negatives == targets[:, None])
        logits = torch.cat([logits, hard_logits.masked_fill(unused, -torch.inf)], 1)
    # mean_i [ logsumexp_c logits[i, c] - logits[i, column[i]] ]
    return F.cross_entropy(logits, column)


def log_expected_counts(
    negative_probs: Tensor,
    num_negatives: int,
    target_probs: Tensor | None = None,
    num_other_targets: int = 0,
) -> Tensor:
    """log Q(c): the log of track c's expected count among a row's candidates.

        Q(c) = N p(c) + (M - 1) q(c)

    with N negatives drawn with replacement from p, and the M - 1 other rows' targets
    (in-batch negatives), distributed as the training targets q. Tracks that can never
    be drawn get log 0 = -inf; they are never candidates either.

    Args:
        negative_probs: [V] p, the negative sampler's distribution (sums to 1).
        num_negatives: N.
        target_probs: [V] q, the targets' distribution; None without in-batch
            negatives.
        num_other_targets: M - 1, the in-batch negatives of a row.
    """
    expected = num_negatives * negative_probs.double()
    if target_probs is not None:
        expected = expected + num_other_targets * target_probs.double()
    # float64: a track drawn with probability 1e-9 still has a finite log.
    return torch.log(expected).to(negative_probs.dtype)


def skip_contrastive_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor,
    anchor_mask: Tensor,
    negative_mask: Tensor,
    temperature: float = 0.1,
) -> Tensor:
    """InfoNCE pulling an anchor towards its positive track and away from the tracks
    skipped in the same session (Seshadri & Knees, arXiv 2309.11623; Seshadri,
    Shashaani & Knees, arXiv 2409.07367), in the papers' semantics.

    With cosine similarity sim and temperature tau, for each anchor a_{b,t} with
    positive p_{b,t} and the session's skipped tracks n_{b,s}:

        l_{b,t} = -log( exp(sim(a, p)/tau)
                  / (exp(sim(a, p)/tau) + sum_s m_{b,t,s} exp(sim(a, n_{b,s})/tau)) )

        L = mean_{(b,t): anchor_mask_{b,t} and sum_s m_{b,t,s} > 0} l_{b,t}

    An anchor left with no negative (a session without skips) has nothing to contrast
    and contributes nothing. ``m`` is per anchor so that the caller can drop a
    negative that is the anchor's own positive (``training.batching.contrastive_pairs``
    does, ``[loss] skip_cl_mask_positive``): a track skipped early in a session and
    played later is both, and keeping it asks the anchor to be near and far from the
    same embedding (the loss then cannot fall below log 2, and its gradient pulls the
    positive and pushes the same vector at once).

    Args:
        anchors: [B, T, D] model outputs at each position (or the raw item embeddings).
        positives: [B, T, D] embedding of each anchor's positive track.
        negatives: [B, S, D] embeddings of the session's skipped tracks.
        anchor_mask: bool [B, T] positions that are anchors.
        negative_mask: bool [B, S] (slot holds a real skipped track) or [B, T, S]
            (slot s is a negative of anchor (b, t)).
        temperature: tau.
    """
    if negative_mask.dim() == 2:
        negative_mask = negative_mask[:, None, :]  # [B, S] -> [B, 1, S]
    # Cosine similarity; F.normalize's eps keeps a zero (padding) vector at 0.
    a = F.normalize(anchors, dim=-1)
    pos = (a * F.normalize(positives, dim=-1)).sum(-1) / temperature  # [B, T]
    # [B, T, D] @ [B, D, S] -> [B, T, S]
    neg = (a @ F.normalize(negatives, dim=-1).transpose(1, 2)) / temperature
    neg = neg.masked_fill(~negative_mask, -torch.inf)
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)  # [B, T, 1 + S]
    losses = torch.logsumexp(logits, dim=-1) - pos
    use = anchor_mask & negative_mask.any(dim=-1)
    # Unused rows can hold -inf - (-inf); zero them before the masked mean.
    return _mean(torch.where(use, losses, 0.0), use)


def authors_code_contrastive_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor,
    anchor_mask: Tensor,
    negative_mask: Tensor,
    negative_rows: Tensor,
    num_slots: int,
    temperature: float = 0.1,
) -> Tensor:
    """The skip InfoNCE exactly as the authors' public code computes it
    (``[loss] skip_cl_compat``), which differs from the papers' formula in three ways.

    Their code (github.com/pseshadri9/sequential-music-recommendation,
    ``get_negative_samples`` + ``utility/loss_metrics.info_nce`` with
    ``negative_mode="paired"``) builds, for a batch of B right-padded sessions of W
    slots, a query per slot ([B*W, D], the output at a played slot, a zero vector
    elsewhere) and a negative set per session ([B, W, D], the item embedding at a
    skipped slot, a zero vector elsewhere), then pairs them with ``n.tile(W, 1, 1)``:

    1. Pairing: query row i = b*W + j (session b, slot j) gets the negatives of
       session ``i mod B``, not of session b. ``negative_rows[b, t]`` holds that row.
    2. Padding count: all W slots of that negative set enter the softmax; a zero slot
       has cosine 0 and adds exp(0) = 1, so each anchor's denominator has
       W - k_r extra ones (k_r = skips of row r).
    3. Averaging: ``cross_entropy(reduction="mean")`` over all B*W query rows; a
       zero query has every logit at 0, so each non-anchor row adds the constant
       log(1 + W) and the anchors' share of the gradient is A / (B*W).

    With r = negative_rows[b, t], k_r = sum_s m_{r,s} and A anchors:

        l_{b,t} = -log( exp(sim(a, p)/tau) / (exp(sim(a, p)/tau)
                  + sum_s m_{r,s} exp(sim(a, n_{r,s})/tau) + (W - k_r)) )

        L = ( sum_{anchors} l_{b,t} + (B*W - A) log(1 + W) ) / (B*W)

    The anchors and positives of that code (every played slot but the last of the W,
    positive = the next played slot of the session or, when there is none, its first
    slot) come from ``training.batching.authors_code_pairs``; no negative is dropped.

    Args:
        anchors: [B, T, D]; positives: [B, T, D]; negatives: [B, S, D] each row's
            skipped tracks; anchor_mask: bool [B, T]; negative_mask: bool [B, S];
        negative_rows: int64 [B, T] the row whose negatives each anchor sees.
        num_slots: W, the padded session width of that code (``max_seq_len``).
        temperature: tau.
    """
    B = anchors.shape[0]
    skips = negative_mask.sum(dim=1)  # [B] k_r
    if bool((skips > num_slots).any()):
        raise ValueError("a row has more skipped tracks than num_slots")
    a = F.normalize(anchors, dim=-1)
    pos = (a * F.normalize(positives, dim=-1)).sum(-1) / temperature  # [B, T]
    rows = negative_rows.clamp(0, B - 1)
    # [B, T, S, D]: each anchor's paired negatives; [B, T, 1, D] * ... -> [B, T, S]
    paired = F.normalize(negatives, dim=-1)[rows]
    neg = (a[:, :, None, :] * paired).sum(-1) / temperature
    neg = neg.masked_fill(~negative_mask[rows], -torch.inf)
    zero_slots = num_slots - skips.to(pos.dtype)  # [B]
    padding = torch.log(zero_slots)[rows]  # [B, T]: log(W - k_r), -inf when 0
    logits = torch.cat([pos[..., None], neg, padding[..., None]], dim=-1)
    losses = torch.logsumexp(logits, dim=-1) - pos  # [B, T]
    anchor_sum = torch.where(anchor_mask, losses, 0.0).sum()
    num_rows = B * num_slots
    rest = (num_rows - anchor_mask.sum()).to(pos.dtype) * math.log(1 + num_slots)
    return (anchor_sum + rest) / num_rows


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
