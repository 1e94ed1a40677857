"""Training sessions -> padded int64 tensors, built once and re-batched every epoch.

Dimension legend: N training windows, W = max_seq_len, B batch, T longest window in a
batch, S skipped tracks per window.

Layout (the same as ``skiprec.encoding``): events oldest first, left-padded with
``PAD_ID`` / ``FEEDBACK_PAD`` so the newest event sits in the last slot; the model
derives position ids from the padded width, so trimming a batch to its longest window
changes nothing.

Windows: a session longer than ``max_seq_len`` is cut into non-overlapping windows
aligned on its *end* (``[L-W, L)``, ``[L-2W, L-W)``, ...), so every event is an input
exactly once and the most recent events, the ones serving sees, always get a full
window of context. Targets are computed on the whole session before cutting, so the last
position of an early window still predicts the first event of the next window.
Sessions with fewer than two events teach nothing about "next" and are dropped.
Tracks missing from the vocabulary (a streamed vocabulary's rare tracks) are OOV
inputs and never targets.

Per position t of a session (all PAD where none exists):
    next_targets[t]         the track at t+1
    next_played_targets[t]  the first track after t that was not skipped
    next_skipped[t]         whether the track at t+1 was skipped
    skipped[t]              whether the track at t was skipped
    feedback[t]             play/skip code of the event at t
    graded_feedback[t]      its skip level's code when the session has grades, else
                            the play/skip code

Graded models (``[model] graded_feedback``) read ``graded_feedback``, except in a
``binary_feedback_share`` of the windows, drawn anew each epoch, which read the
play/skip codes: a whole window, as a client that sends no grades sends none.

Skip head: each position with a next track carries that track (``skip_targets``) and
whether it was skipped (``skip_labels``); under BERT4Rec masking, the masked track
and its own skip label (its feedback is masked in the input, so nothing leaks).

BERT4Rec masking (``masked_batches``): each real position is masked with ``mask_prob``
(``MASK_ID`` in, ``FEEDBACK_MASK`` feedback, target = the hidden track); in a
``LAST_MASK_FRACTION`` of windows, and in every window where no position drew a mask,
only the newest event is masked instead, which is exactly the inference layout (history
followed by one mask in the last slot, ``EncodingSpec(append_mask=True)``).

OOV inputs (``[loss] oov_share``): serving maps every track missing from the vocabulary
to ``OOV_ID``, whose embedding training never sees otherwise. Each epoch, an
``oov_share`` of the input occurrences of rare tracks (at most ``oov_max_count``
occurrences in the training windows) reads ``OOV_ID`` instead; the true track stays in
``tracks`` and in every target. On the MSSD dev split, tracks seen once are 1.96% of
the training occurrences, close to the 2.2-2.6% of held-out input events that are OOV
(Good-Turing: the singletons' share estimates the unseen tracks' mass).

Skip contrastive pairs (``contrastive_pairs``): anchors, positives and negatives of
``training.losses.skip_contrastive_loss`` (or, with ``skip_cl_compat``, of
``authors_code_contrastive_loss``, from ``authors_code_pairs``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from skiprec.encoding import (
    FEEDBACK_LEVEL_BASE,
    FEEDBACK_MASK,
    FEEDBACK_PAD,
    FEEDBACK_PLAY,
    FEEDBACK_SKIP,
)
from skiprec.vocab import MASK_ID, NUM_SPECIAL, OOV_ID, PAD_ID, Vocabulary
from training.config import LossConfig, TrainConfig
from training.distributed import SINGLE, DistContext, shard_rows

# Share of BERT4Rec windows trained with only their newest event masked (BERT4Rec,
# Sun et al. 2019, sec. 3.6: "we also produce samples that only mask the last item").
LAST_MASK_FRACTION = 0.25


class SessionLike(Protocol):
    """What batching reads from ``training.data.Session``."""

    @property
    def track_ids(self) -> tuple[str, ...]: ...

    @property
    def skipped(self) -> tuple[bool, ...]: ...

    @property
    def levels(self) -> tuple[int | None, ...] | None: ...


@dataclass(frozen=True)
class TrainWindows:
    """All training windows of a split, int64/bool tensors [N, W], left-padded."""

    tracks: Tensor  # int64 track index per event
    feedback: Tensor  # int64 FEEDBACK_PLAY / FEEDBACK_SKIP
    graded_feedback: Tensor  # int64 level codes where graded, else as feedback
    skipped: Tensor  # bool
    next_targets: Tensor  # int64
    next_played_targets: Tensor  # int64
    next_skipped: Tensor  # bool
    lengths: Tensor  # int64 [N], real events per window

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


@dataclass(frozen=True)
class Batch:
    """One training batch, every tensor [B, T].

    ``item_ids``/``feedback`` are the model inputs (masked for BERT4Rec); ``tracks``
    and ``skipped`` are the true events; ``targets`` feed the main loss,
    ``negative_targets`` the unlikelihood term (a skipped track the model should not
    predict there), ``positives`` the skip contrastive term (next played track) and
    ``skip_targets``/``skip_labels`` the skip head (the track predicted there, PAD
    where none, and whether it was skipped).
    """

    item_ids: Tensor
    feedback: Tensor
    tracks: Tensor
    skipped: Tensor
    targets: Tensor
    negative_targets: Tensor
    positives: Tensor
    skip_targets: Tensor
    skip_labels: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{name: t.to(device) for name, t in vars(self).items()})

    def contrastive_anchors(self) -> Tensor:
        """bool [B, T]: played positions that have a later played track (the anchors
        of the skip contrastive loss); padding and skipped positions never are."""
        return (self.tracks != PAD_ID) & ~self.skipped & (self.positives != PAD_ID)


def build_windows(
    sessions: Sequence[SessionLike], vocab: Vocabulary, max_seq_len: int
) -> TrainWindows:
    """Encode sessions with ``vocab`` and cut them into end-aligned windows."""
    sessions = [s for s in sessions if len(s.track_ids) >= 2]
    if not sessions:
        raise ValueError("no training session has two or more events")
    lengths = np.array([len(s.track_ids) for s in sessions], dtype=np.int64)
    items = np.fromiter(
        (i for s in sessions for i in vocab.indices(s.track_ids)),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    skips = np.fromiter(
        (bool(k) for s in sessions for k in s.skipped), dtype=bool, count=len(items)
    )
    levels = np.fromiter(  # -1 = no grade
        (
            -1 if level is None else level
            for s in sessions
            for level in (s.levels or (None,) * len(s.track_ids))
        ),
        dtype=np.int64,
        count=len(items),
    )
    ends = np.cumsum(lengths)  # exclusive end of each session in the flat arrays
    session_end = np.repeat(ends, lengths)  # [E] end of the event's session
    position = np.arange(len(items))

    has_next = position + 1 < session_end
    next_targets = np.where(has_next, np.roll(items, -1), PAD_ID)
    next_skipped = has_next & np.roll(skips, -1)
    played_at = np.flatnonzero(~skips)
    # First played event strictly after each position, if it is in the same session.
    follow = np.searchsorted(played_at, position, side="right")
    follow_pos = np.append(played_at, len(items))[follow]
    next_played_targets = np.where(
        follow_pos < session_end, items[np.minimum(follow_pos, len(items) - 1)], PAD_ID
    )
    # A track missing from the vocabulary (below a streamed vocabulary's min count)
    # is an OOV input, which trains the OOV embedding, and never a target: serving
    # never ranks OOV.
    next_targets[next_targets == OOV_ID] = PAD_ID
    next_played_targets[next_played_targets == OOV_ID] = PAD_ID

    # Windows per session: ceil(L / W), ending at L, L-W, ... (flat coordinates).
    per_session = -(-lengths // max_seq_len)
    first_window = np.repeat(np.cumsum(per_session) - per_session, per_session)
    k = np.arange(int(per_session.sum())) - first_window  # window number from the end
    window_end = np.repeat(ends, per_session) - k * max_seq_len
    window_start = np.maximum(
        window_end - max_seq_len, np.repeat(ends - lengths, per_session)
    )
    # [N, W]: column j holds flat event window_end - W + j if inside the window.
    flat = window_end[:, None] - max_seq_len + np.arange(max_seq_len)[None, :]
    real = flat >= window_start[:, None]
    flat = np.where(real, flat, 0)

    def take(values: np.ndarray, pad: int | bool) -> Tensor:
        return torch.from_numpy(np.where(real, values[flat], pad))

    feedback = np.where(skips, FEEDBACK_SKIP, FEEDBACK_PLAY)
    graded = np.where(levels >= 0, FEEDBACK_LEVEL_BASE + levels, feedback)
    return TrainWindows(
        tracks=take(items, PAD_ID),
        feedback=take(feedback, FEEDBACK_PAD),
        graded_feedback=take(graded, FEEDBACK_PAD),
        skipped=take(skips, False),
        next_targets=take(next_targets, PAD_ID),
        next_played_targets=take(next_played_targets, PAD_ID),
        next_skipped=take(next_skipped, False),
        lengths=torch.from_numpy(window_end - window_start),
    )


def epoch_batches(
    windows: TrainWindows,
    config: TrainConfig,
    generator: torch.Generator,
    context: DistContext = SINGLE,
    rare: Tensor | None = None,
) -> Iterator[Batch]:
    """Shuffle, (BERT4Rec: mask), then yield batches trimmed to their longest window.

    All per-epoch randomness is drawn once for the whole epoch; a batch is a slice.
    Under torchrun every rank draws the same epoch and yields its share of each
    global batch of ``batch_size`` rows; a last global batch smaller than the world
    is dropped, so that every rank takes the same number of steps. ``rare``: bool
    [V], the tracks whose inputs ``[loss] oov_share`` may turn into OOV
    (:func:`rare_tracks`; default: of the counts in ``windows``).
    """
    order = torch.randperm(len(windows), generator=generator)
    full = epoch_inputs(windows, config, generator, rare)
    for start in range(0, len(order), config.optim.batch_size):
        rows = order[start : start + config.optim.batch_size]
        if len(rows) < context.world_size:
            break
        yield trimmed_batch(full, windows.lengths, shard_rows(rows, context))


def epoch_inputs(
    windows: TrainWindows,
    config: TrainConfig,
    generator: torch.Generator,
    rare: Tensor | None = None,
) -> Batch:
    """Every window's inputs and targets for one epoch ([N, W]): graded inputs
    coarsened, BERT4Rec masks and OOV inputs drawn with ``generator``, in that
    order."""
    if config.model.graded_feedback:
        windows = _graded_inputs(windows, config.model.binary_feedback_share, generator)
    if config.model.backbone == "bert4rec":
        full = _masked(windows, config.loss.mask_prob, config.loss.target, generator)
    else:
        full = _causal(windows, config.loss.target)
    if config.loss.oov_share > 0:  # drawn last: the other draws stay as without it
        if rare is None:
            # Every training event is in exactly one window: these are its counts.
            counts = torch.bincount(windows.tracks.flatten())
            rare = rare_tracks(counts, config.loss.oov_max_count)
        full = _rare_inputs_to_oov(full, config.loss.oov_share, rare, generator)
    return full


def trimmed_batch(full: Batch, lengths: Tensor, rows: Tensor) -> Batch:
    """Rows ``rows`` of ``full`` ([N, W]), cut to the longest of their windows."""
    width = full.tracks.shape[1]
    seq_len = int(lengths[rows].max())
    cols = slice(width - seq_len, width)
    return Batch(**{name: t[rows, cols] for name, t in vars(full).items()})


def rare_tracks(counts: Tensor, max_count: int) -> Tensor:
    """bool [V']: the real tracks counted at most ``max_count`` times (``counts``
    int64 [V'], per vocabulary index, up to the largest one seen)."""
    rare = counts <= max_count
    rare[:NUM_SPECIAL] = False
    return rare


def select_windows(windows: TrainWindows, rows: Tensor) -> TrainWindows:
    """The windows ``rows`` (int64 [n]) of ``windows``, in that order."""
    return TrainWindows(**{name: t[rows] for name, t in vars(windows).items()})


def concat_windows(first: TrainWindows, second: TrainWindows) -> TrainWindows:
    """``first``'s windows followed by ``second``'s (the same width W)."""
    return TrainWindows(
        **{
            name: torch.cat([t, getattr(second, name)])
            for name, t in vars(first).items()
        }
    )


def streamed_batches(
    chunks: Iterable[TrainWindows],
    config: TrainConfig,
    batch_rows: int,
    seed: str,
    rare: Tensor,
) -> Iterator[Batch]:
    """Batches of ``batch_rows`` windows from a stream of window chunks, made as
    :func:`epoch_batches` makes a whole epoch's: each chunk, with the windows the
    chunk before left over, is shuffled and drawn (:func:`epoch_inputs`) with a
    generator seeded from ``seed`` and the chunk's number, its full batches yielded
    and the rest carried on; the last rows of the stream make a smaller last batch.

    The draws depend on the seed and the data only, not on other users of a
    generator, so an epoch drawn again (a resumed run) yields the same batches.
    """
    pending: TrainWindows | None = None
    for number, chunk in enumerate(chunks):
        windows = chunk if pending is None else concat_windows(pending, chunk)
        generator = torch.Generator().manual_seed(_seed_of(f"{seed}:{number}"))
        order = torch.randperm(len(windows), generator=generator)
        usable = len(windows) // batch_rows * batch_rows
        pending = select_windows(windows, order[usable:])
        if usable:
            kept = select_windows(windows, order[:usable])
            yield from _batches_of(kept, config, generator, rare, batch_rows)
    if pending is not None and len(pending):
        generator = torch.Generator().manual_seed(_seed_of(f"{seed}:last"))
        yield from _batches_of(pending, config, generator, rare, len(pending))


def _batches_of(
    windows: TrainWindows,
    config: TrainConfig,
    generator: torch.Generator,
    rare: Tensor,
    batch_rows: int,
) -> Iterator[Batch]:
    """``windows`` (already shuffled) drawn, then cut into consecutive batches."""
    full = epoch_inputs(windows, config, generator, rare)
    for start in range(0, len(windows), batch_rows):
        rows = torch.arange(start, min(start + batch_rows, len(windows)))
        yield trimmed_batch(full, windows.lengths, rows)


def _seed_of(key: str) -> int:
    """A 63-bit generator seed from a text key (stable across processes)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def num_batches(num_windows: int, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch of :func:`epoch_batches` (the same on every rank)."""
    full, rest = divmod(num_windows, batch_size)
    return full + (rest >= world_size)


def _graded_inputs(
    windows: TrainWindows, binary_share: float, generator: torch.Generator
) -> TrainWindows:
    """``windows`` with graded feedback codes, a ``binary_share`` of the windows
    (drawn with ``generator``) coarsened back to play/skip."""
    binary = torch.rand(len(windows), generator=generator) < binary_share  # [N]
    feedback = torch.where(binary[:, None], windows.feedback, windows.graded_feedback)
    return dataclasses.replace(windows, feedback=feedback)


def _rare_inputs_to_oov(
    full: Batch, share: float, rare: Tensor, generator: torch.Generator
) -> Batch:
    """``full`` (all windows, [N, W]) with a ``share`` of the input occurrences of
    ``rare`` tracks (bool [V']) replaced by OOV_ID (drawn with ``generator``;
    BERT4Rec's masked inputs stay masked)."""
    # A track beyond the table's end was not counted: never rare (tracks >= V').
    in_table = full.tracks < rare.shape[0]
    is_rare = in_table & rare[full.tracks.clamp(max=rare.shape[0] - 1)]
    drawn = torch.rand(full.tracks.shape, generator=generator) < share  # [N, W]
    replace = is_rare & drawn & (full.item_ids != MASK_ID)
    return dataclasses.replace(
        full, item_ids=torch.where(replace, OOV_ID, full.item_ids)
    )


def _causal_targets(windows: TrainWindows, target: str) -> Tensor:
    if target == "next":
        return windows.next_targets
    if target == "next_played":
        return windows.next_played_targets
    return torch.where(windows.next_skipped, PAD_ID, windows.next_targets)


def _causal(windows: TrainWindows, target: str) -> Batch:
    """SASRec: predict at every position the next (or next played) track."""
    return Batch(
        item_ids=windows.tracks,
        feedback=windows.feedback,
        tracks=windows.tracks,
        skipped=windows.skipped,
        targets=_causal_targets(windows, target),
        negative_targets=torch.where(
            windows.next_skipped, windows.next_targets, PAD_ID
        ),
        positives=windows.next_played_targets,
        skip_targets=windows.next_targets,
        skip_labels=windows.next_skipped,
    )


def _masked(
    windows: TrainWindows, mask_prob: float, target: str, generator: torch.Generator
) -> Batch:
    """BERT4Rec: recover masked tracks (``next_played``: played ones only)."""
    real = windows.tracks != PAD_ID
    shape = windows.tracks.shape
    masked = (torch.rand(shape, generator=generator) < mask_prob) & real
    last_only = (torch.rand(shape[0], generator=generator) < LAST_MASK_FRACTION) | ~(
        masked.any(dim=1)
    )
    newest = torch.zeros(shape, dtype=torch.bool)
    newest[:, -1] = True
    masked = torch.where(last_only[:, None], newest, masked)
    hidden = windows.tracks
    # Both skip-aware targets mean "played tracks only" for a masked model.
    keep_target = masked if target == "next" else masked & ~windows.skipped
    keep_target &= hidden != OOV_ID  # an OOV track is never a target
    return Batch(
        item_ids=torch.where(masked, MASK_ID, hidden),
        feedback=torch.where(masked, FEEDBACK_MASK, windows.feedback),
        tracks=hidden,
        skipped=windows.skipped,
        targets=torch.where(keep_target, hidden, PAD_ID),
        negative_targets=torch.where(masked & windows.skipped, hidden, PAD_ID),
        positives=windows.next_played_targets,
        skip_targets=torch.where(masked & (hidden != OOV_ID), hidden, PAD_ID),
        skip_labels=masked & windows.skipped,
    )


def session_skips(tracks: Tensor, skipped: Tensor) -> tuple[Tensor, Tensor]:
    """The skipped tracks of each window, packed to the left.

    Args:
        tracks: int64 [B, T]; skipped: bool [B, T].
    Returns:
        ids int64 [B, S] (PAD-filled) and mask bool [B, S]; S = the most skips
        in one row (at least 1).
    """
    # Stable sort puts skipped positions first, in session order.
    order = torch.argsort((~skipped).to(torch.int8), dim=1, stable=True)
    count = int(skipped.sum(dim=1).max()) if skipped.numel() else 0
    width = max(count, 1)
    ids = torch.where(skipped, tracks, PAD_ID).gather(1, order)[:, :width]
    mask = skipped.gather(1, order)[:, :width]
    return ids, mask


@dataclass(frozen=True)
class ContrastivePairs:
    """What the skip contrastive term compares, as track indices (the loss call
    embeds them). Every tensor is [B, T] unless stated.

    ``anchors`` bool: positions that are anchors; ``positives`` int64: each anchor's
    positive track (PAD elsewhere); ``negatives`` int64 [B, S] and ``negative_mask``
    bool, [B, T, S] (per anchor) or [B, S] (per row): the window's skipped tracks;
    ``negative_rows`` int64: the row whose negatives each anchor sees (the authors'
    code only, else None).
    """

    anchors: Tensor
    positives: Tensor
    negatives: Tensor
    negative_mask: Tensor
    negative_rows: Tensor | None = None


def contrastive_pairs(
    batch: Batch, config: LossConfig, backbone: str, num_slots: int
) -> ContrastivePairs:
    """Anchors, positives and negatives of the skip contrastive term for ``batch``.

    Papers' semantics (``skip_cl_compat`` false): anchors are the played positions
    that have a later played track, their positive that track, their negatives the
    window's skipped tracks. BERT4Rec with output anchors and
    ``skip_cl_masked_anchors``: anchors only at masked played positions, positive =
    the masked track (what the position predicts; an unmasked position has it in its
    input). ``skip_cl_mask_positive``: a negative equal to the anchor's positive is
    dropped for that anchor. ``skip_cl_compat``: the authors' code
    (:func:`authors_code_pairs`, ``num_slots`` = their padded width W).
    """
    negatives, negative_mask = session_skips(batch.tracks, batch.skipped)
    if config.skip_cl_compat:
        anchors, positives, rows = authors_code_pairs(
            batch.tracks, batch.skipped, num_slots
        )
        return ContrastivePairs(anchors, positives, negatives, negative_mask, rows)
    anchors, positives = batch.contrastive_anchors(), batch.positives
    if (
        backbone == "bert4rec"
        and config.skip_cl_masked_anchors
        and config.skip_cl_anchor == "output"
    ):
        masked = batch.item_ids == MASK_ID
        anchors = masked & ~batch.skipped & (batch.tracks != PAD_ID)
        positives = torch.where(anchors, batch.tracks, PAD_ID)
    mask = negative_mask
    if config.skip_cl_mask_positive:
        # [B, 1, S] & ([B, 1, S] != [B, T, 1]) -> [B, T, S]
        mask = negative_mask[:, None, :] & (
            negatives[:, None, :] != positives[:, :, None]
        )
    return ContrastivePairs(anchors, positives, negatives, mask)


def authors_code_pairs(
    tracks: Tensor, skipped: Tensor, num_slots: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Anchors, positives and negative rows of the authors' public code on our windows.

    That code (``get_negative_samples``/``_closest_pos_sample``) sees a window as W =
    ``num_slots`` right-padded slots, event j in slot j. Anchors: every played slot
    but slot W - 1. Positive: the nearest later played slot of the window or, when
    there is none (``argmin`` over an all-maximum row), slot 0, the window's first
    event. Negatives of the query row b*W + j: row ``(b*W + j) mod B``
    (``n.tile(W, 1, 1)`` against ``p.view(-1, D)``).

    Args:
        tracks: int64 [B, T] left-padded windows; skipped: bool [B, T].
    Returns:
        anchors bool [B, T], positives int64 [B, T] (PAD where not an anchor) and
        negative_rows int64 [B, T] (0 where not an anchor).
    """
    B, T = tracks.shape
    real = tracks != PAD_ID
    column = torch.arange(T, device=tracks.device)
    first = T - real.sum(dim=1)  # [B] column of the window's first event
    slot = column[None, :] - first[:, None]  # [B, T] j, the event's slot there
    played = real & ~skipped
    # Nearest played column strictly after t: a suffix minimum, shifted by one.
    played_column = torch.where(played, column, T)  # [B, T]
    suffix = played_column.flip(1).cummin(dim=1).values.flip(1)  # min over t' >= t
    after = torch.cat([suffix[:, 1:], torch.full_like(suffix[:, :1], T)], dim=1)
    positive_column = torch.where(after < T, after, first[:, None]).clamp(max=T - 1)
    anchors = played & (slot < num_slots - 1)
    positives = torch.where(anchors, tracks.gather(1, positive_column), PAD_ID)
    rows = (torch.arange(B, device=tracks.device)[:, None] * num_slots + slot) % B
    return anchors, positives, torch.where(anchors, rows, 0)
