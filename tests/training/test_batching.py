"""Batching: targets, windows and BERT4Rec masking on hand-made sessions."""

import pytest
import torch

from skiprec.encoding import (
    FEEDBACK_LEVEL_BASE,
    FEEDBACK_MASK,
    FEEDBACK_PAD,
    FEEDBACK_PLAY,
    FEEDBACK_SKIP,
)
from skiprec.vocab import MASK_ID, OOV_ID, PAD_ID, Vocabulary
from training.batching import (
    Batch,
    authors_code_pairs,
    build_windows,
    contrastive_pairs,
    epoch_batches,
    session_skips,
)
from training.config import LossConfig, TrainConfig
from training.data import Session

P, S = FEEDBACK_PLAY, FEEDBACK_SKIP
VOCAB = Vocabulary(("a", "b", "c", "d", "e"))  # a=3, b=4, c=5, d=6, e=7
A, B_, C, D_, E = 3, 4, 5, 6, 7


def _sessions():
    return [
        # a(play) b(skip) c(skip) d(play) e(skip)
        Session("s1", ("a", "b", "c", "d", "e"), (False, True, True, False, True)),
        Session("s2", ("c", "a"), (True, False)),
        Session("s3", ("e",), (False,)),  # too short to teach "next": dropped
    ]


def test_build_windows_targets_by_hand():
    windows = build_windows(_sessions(), VOCAB, max_seq_len=5)
    assert windows.tracks.tolist() == [[A, B_, C, D_, E], [0, 0, 0, C, A]]
    assert windows.feedback.tolist() == [[P, S, S, P, S], [0, 0, 0, S, P]]
    assert windows.next_targets.tolist() == [[B_, C, D_, E, 0], [0, 0, 0, A, 0]]
    assert windows.next_played_targets.tolist() == [[D_, D_, D_, 0, 0], [0, 0, 0, A, 0]]
    assert windows.next_skipped.tolist() == [
        [True, True, False, True, False],
        [False, False, False, False, False],
    ]
    assert windows.skipped.tolist() == [
        [False, True, True, False, True],
        [False, False, False, True, False],
    ]
    assert windows.lengths.tolist() == [5, 2]


def test_build_windows_cuts_long_sessions_from_the_end_with_targets_across():
    windows = build_windows(_sessions()[:1], VOCAB, max_seq_len=2)
    # a b | c d | e  ->  windows ending at the session end: [d e], [b c], [a]
    assert windows.tracks.tolist() == [[D_, E], [B_, C], [0, A]]
    # The last position of an early window still predicts the next window's first event.
    assert windows.next_targets.tolist() == [[E, 0], [C, D_], [0, B_]]
    assert windows.next_played_targets.tolist() == [[0, 0], [D_, D_], [0, D_]]
    assert windows.feedback[2].tolist() == [FEEDBACK_PAD, P]


def test_epoch_batches_cover_every_window_once_trimmed_to_longest():
    sessions = [
        Session(
            f"s{i}", ("a", "b", "c")[: 2 + i % 2], (False, True, False)[: 2 + i % 2]
        )
        for i in range(7)
    ]
    windows = build_windows(sessions, VOCAB, max_seq_len=8)
    config = TrainConfig().replace(batch_size=3, max_seq_len=8)
    batches = list(epoch_batches(windows, config, torch.Generator().manual_seed(0)))
    assert [b.item_ids.shape[0] for b in batches] == [3, 3, 1]
    for batch in batches:
        lengths = (batch.item_ids != PAD_ID).sum(1)
        assert batch.item_ids.shape[1] == lengths.max()
        assert (
            batch.targets == torch.where(batch.item_ids > 0, batch.targets, 0)
        ).all()
    assert sum(int((b.item_ids != PAD_ID).sum()) for b in batches) == 7 * 2 + 3


def test_causal_batch_targets_follow_config():
    windows = build_windows(_sessions(), VOCAB, max_seq_len=5)
    gen = torch.Generator().manual_seed(0)
    for target, expected in (
        ("next", windows.next_targets),
        ("next_played", windows.next_played_targets),
        # played_only keeps a target only where the next track was played (c -> d,
        # c -> a); the skipped next tracks b, c and e give no positive.
        ("played_only", torch.tensor([[0, 0, D_, 0, 0], [0, 0, 0, A, 0]])),
    ):
        config = TrainConfig().replace(batch_size=10, max_seq_len=5, target=target)
        (batch,) = epoch_batches(windows, config, gen)
        order = batch.tracks[:, -1].argsort(descending=True)  # s1 (e=7) first
        assert batch.targets[order].tolist() == expected.tolist()
        assert batch.item_ids[order].tolist() == windows.tracks.tolist()
    # Unlikelihood negatives: the next track wherever it was skipped.
    assert batch.negative_targets[order].tolist() == [[B_, C, 0, E, 0], [0, 0, 0, 0, 0]]
    assert batch.contrastive_anchors()[order].tolist() == [
        [True, False, False, False, False],
        [False, False, False, False, False],
    ]


def test_bert4rec_masking():
    sessions = [
        Session(f"s{i}", ("a", "b", "c", "d", "e"), tuple(j % 2 == 1 for j in range(5)))
        for i in range(200)
    ]
    windows = build_windows(sessions, VOCAB, max_seq_len=5)
    config = TrainConfig().replace(
        batch_size=500, max_seq_len=5, backbone="bert4rec", mask_prob=0.3
    )
    (batch,) = epoch_batches(windows, config, torch.Generator().manual_seed(1))
    masked = batch.item_ids == MASK_ID
    assert (masked == (batch.feedback == FEEDBACK_MASK)).all()
    assert masked.any(dim=1).all()  # every window trains on something
    assert (batch.targets == torch.where(masked, batch.tracks, PAD_ID)).all()
    assert (batch.item_ids[~masked] == batch.tracks[~masked]).all()
    last_only = masked[:, -1] & (masked.sum(1) == 1)
    assert 0.15 < last_only.float().mean() < 0.6  # the inference layout is trained
    rate = masked[:, :-1].float().mean()
    assert 0.15 < rate < 0.35
    negatives = torch.where(masked & batch.skipped, batch.tracks, PAD_ID)
    assert (batch.negative_targets == negatives).all()

    played = config.replace(target="next_played")
    (batch,) = epoch_batches(windows, played, torch.Generator().manual_seed(1))
    masked = batch.item_ids == MASK_ID
    keep = masked & ~batch.skipped
    assert (batch.targets == torch.where(keep, batch.tracks, PAD_ID)).all()


def test_epoch_batches_are_seeded():
    windows = build_windows(_sessions() * 20, VOCAB, max_seq_len=5)
    config = TrainConfig().replace(batch_size=4, max_seq_len=5, backbone="bert4rec")
    first = [
        b.item_ids
        for b in epoch_batches(windows, config, torch.Generator().manual_seed(3))
    ]
    again = [
        b.item_ids
        for b in epoch_batches(windows, config, torch.Generator().manual_seed(3))
    ]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def test_session_skips_packs_each_rows_skips_left():
    tracks = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9], [0, 0, 3, 4]])
    skipped = torch.tensor(
        [
            [False, False, True, True],
            [True, False, False, True],
            [False, False, False, False],
        ]
    )
    ids, mask = session_skips(tracks, skipped)
    assert ids.tolist() == [[4, 5], [6, 9], [0, 0]]
    assert mask.tolist() == [[True, True], [True, True], [False, False]]
    ids, mask = session_skips(tracks, torch.zeros_like(skipped))
    assert ids.shape == (3, 1) and not mask.any()


def _graded_sessions():
    return [
        # levels 3 1 0 2 (play skip skip play) and one session without grades
        Session(
            "g", ("a", "b", "c", "d"), (False, True, True, False), levels=(3, 1, 0, 2)
        ),
        Session("p", ("c", "a"), (True, False)),
    ]


def test_build_windows_keeps_level_codes_beside_the_binary_ones():
    windows = build_windows(_graded_sessions(), VOCAB, max_seq_len=4)
    L = FEEDBACK_LEVEL_BASE
    assert windows.feedback.tolist() == [[P, S, S, P], [0, 0, S, P]]
    assert windows.graded_feedback.tolist() == [
        [L + 3, L + 1, L + 0, L + 2],
        [0, 0, S, P],
    ]


@pytest.mark.parametrize(("share", "graded_rows"), [(0.0, 40), (0.999999, 0)])
def test_graded_training_coarsens_a_share_of_windows(share, graded_rows):
    windows = build_windows(_graded_sessions()[:1] * 40, VOCAB, max_seq_len=4)
    config = TrainConfig().replace(
        batch_size=100,
        max_seq_len=4,
        feedback_input=True,
        graded_feedback=True,
        binary_feedback_share=share,
    )
    (batch,) = epoch_batches(windows, config, torch.Generator().manual_seed(0))
    graded = (batch.feedback >= FEEDBACK_LEVEL_BASE).all(dim=1)
    assert int(graded.sum()) == graded_rows
    assert (batch.feedback[~graded] == windows.feedback[: int((~graded).sum())]).all()


def test_graded_training_coarsens_whole_windows_about_the_share():
    windows = build_windows(_graded_sessions()[:1] * 1000, VOCAB, max_seq_len=4)
    config = TrainConfig().replace(
        batch_size=1000, max_seq_len=4, feedback_input=True, graded_feedback=True
    )
    (batch,) = epoch_batches(windows, config, torch.Generator().manual_seed(0))
    graded = batch.feedback >= FEEDBACK_LEVEL_BASE
    assert (graded.all(dim=1) | ~graded.any(dim=1)).all()  # never mixed in a window
    assert 0.25 < float((~graded.any(dim=1)).float().mean()) < 0.35  # default 0.3


def test_skip_head_targets_causal_and_masked():
    windows = build_windows(_sessions(), VOCAB, max_seq_len=5)
    config = TrainConfig().replace(batch_size=10, max_seq_len=5, target="played_only")
    (batch,) = epoch_batches(windows, config, torch.Generator().manual_seed(0))
    order = batch.tracks[:, -1].argsort(descending=True)
    # Every next track, skipped or not, whatever the main loss's target.
    assert batch.skip_targets[order].tolist() == windows.next_targets.tolist()
    assert batch.skip_labels[order].tolist() == windows.next_skipped.tolist()

    masked_config = config.replace(backbone="bert4rec", mask_prob=0.5)
    (batch,) = epoch_batches(windows, masked_config, torch.Generator().manual_seed(0))
    masked = batch.item_ids == MASK_ID
    assert (batch.skip_targets == torch.where(masked, batch.tracks, PAD_ID)).all()
    assert (batch.skip_labels == (masked & batch.skipped)).all()


def _one_batch(sessions, **changes):
    windows = build_windows(sessions, VOCAB, max_seq_len=5)
    config = TrainConfig().replace(batch_size=1000, max_seq_len=5, **changes)
    (batch,) = epoch_batches(windows, config, torch.Generator().manual_seed(0))
    return batch, config


def test_contrastive_pairs_mask_a_negative_equal_to_the_positive():
    # a(play) b(skip) c(play) b(play): b is skipped, then played as c's positive.
    session = Session("s", ("a", "b", "c", "b"), (False, True, False, False))
    batch, config = _one_batch([session])
    pairs = contrastive_pairs(batch, config.loss, "sasrec", 5)
    assert pairs.anchors.tolist() == [[True, False, True, False]]
    assert pairs.positives.tolist() == [[C, C, B_, 0]]
    assert pairs.negatives.tolist() == [[B_]]
    # [B, T, S]: the anchor at a (positive c) keeps b; the anchor at c (positive b)
    # drops it; positions without a positive (PAD) keep the row's slot.
    assert pairs.negative_mask[0, :, 0].tolist() == [True, True, False, True]
    assert pairs.negative_rows is None

    kept = contrastive_pairs(
        batch, LossConfig(skip_cl_mask_positive=False), "sasrec", 5
    )
    assert kept.negative_mask.tolist() == [[True]]  # [B, S] as before the fix
    assert torch.equal(kept.anchors, pairs.anchors)


def _masked_batch():
    """A hand-made BERT4Rec batch: a(play) b(skip) [MASK: c, play] d(play)
    [MASK: e, skip]."""
    tracks = torch.tensor([[A, B_, C, D_, E]])
    skipped = torch.tensor([[False, True, False, False, True]])
    item_ids = torch.tensor([[A, B_, MASK_ID, D_, MASK_ID]])
    positives = torch.tensor([[C, C, D_, 0, 0]])  # next played
    zeros = torch.zeros_like(tracks)
    return Batch(
        item_ids=item_ids,
        feedback=zeros,
        tracks=tracks,
        skipped=skipped,
        targets=zeros,
        negative_targets=zeros,
        positives=positives,
        skip_targets=zeros,
        skip_labels=skipped,
    )


def test_contrastive_pairs_bert4rec_anchor_only_masked_played_positions():
    batch = _masked_batch()
    pairs = contrastive_pairs(batch, LossConfig(), "bert4rec", 5)
    # Only the masked, played c is an anchor; its positive is c itself.
    assert pairs.anchors.tolist() == [[False, False, True, False, False]]
    assert pairs.positives.tolist() == [[0, 0, C, 0, 0]]
    assert pairs.negatives.tolist() == [[B_, E]]
    # Off, or with item-embedding anchors, or for SASRec: every played position
    # with a later played track, towards that track (the pre-fix behaviour).
    for config, backbone in (
        (LossConfig(skip_cl_masked_anchors=False), "bert4rec"),
        (LossConfig(skip_cl_anchor="item_embedding"), "bert4rec"),
        (LossConfig(), "sasrec"),
    ):
        old = contrastive_pairs(batch, config, backbone, 5)
        assert old.anchors.tolist() == [[True, False, True, False, False]]
        assert torch.equal(old.positives, batch.positives)


def test_contrastive_pairs_bert4rec_from_epoch_batches():
    sessions = [
        Session(f"s{i}", ("a", "b", "c", "d", "e"), tuple(j % 2 == 1 for j in range(5)))
        for i in range(50)
    ]
    batch, config = _one_batch(sessions, backbone="bert4rec", mask_prob=0.4)
    pairs = contrastive_pairs(batch, config.loss, "bert4rec", 5)
    masked = batch.item_ids == MASK_ID
    assert torch.equal(pairs.anchors, masked & ~batch.skipped)
    assert torch.equal(pairs.positives, torch.where(pairs.anchors, batch.tracks, 0))


def test_authors_code_pairs_by_hand():
    # W = 4, B = 3, left-padded windows:
    #   row 0: PAD a(play) b(skip) c(play)    slots j = -, 0, 1, 2
    #   row 1: a(play) b(play) c(skip) d(play) slots 0..3 (full: slot 3 is no anchor)
    #   row 2: PAD PAD a(skip) b(play)        slots -, -, 0, 1
    tracks = torch.tensor([[0, A, B_, C], [A, B_, C, D_], [0, 0, A, B_]])
    skipped = torch.tensor(
        [
            [False, False, True, False],
            [False, False, True, False],
            [False, False, True, False],
        ]
    )
    anchors, positives, rows = authors_code_pairs(tracks, skipped, num_slots=4)
    assert anchors.tolist() == [
        [False, True, False, True],
        [True, True, False, False],
        [False, False, False, True],
    ]
    # Nearest later played slot; none -> slot 0, the window's first (even skipped)
    # event: c's positive in row 0 is a, b's in row 2 is a.
    assert positives.tolist() == [[0, C, 0, A], [B_, D_, 0, 0], [0, 0, 0, A]]
    # Query row b*W + j sees the negatives of row (b*W + j) mod B.
    assert rows.tolist() == [[0, 0, 0, 2], [1, 2, 0, 0], [0, 0, 0, 0]]


def test_contrastive_pairs_compat_uses_the_authors_code():
    batch, _ = _one_batch(_sessions()[:2])
    pairs = contrastive_pairs(batch, LossConfig(skip_cl_compat=True), "sasrec", 5)
    anchors, positives, rows = authors_code_pairs(batch.tracks, batch.skipped, 5)
    assert torch.equal(pairs.anchors, anchors)
    assert torch.equal(pairs.positives, positives)
    assert torch.equal(pairs.negative_rows, rows)
    assert pairs.negative_mask.dim() == 2  # no negative is dropped


def _oov_sessions():
    # counts in training: a 4, b 2, c 1, d 1
    return [
        Session("s1", ("a", "b", "c", "a"), (False, True, False, False)),
        Session("s2", ("a", "b", "d", "a"), (False, False, True, False)),
    ]


@pytest.mark.parametrize(("max_count", "rare"), [(1, {C, D_}), (2, {B_, C, D_})])
def test_oov_inputs_replace_rare_tracks_only(max_count, rare):
    share = 0.999999  # every draw replaces
    batch, _ = _one_batch(_oov_sessions(), oov_share=share, oov_max_count=max_count)
    plain, _ = _one_batch(_oov_sessions())
    expected = torch.where(
        torch.isin(plain.tracks, torch.tensor(sorted(rare))), OOV_ID, plain.item_ids
    )
    assert torch.equal(batch.item_ids, expected)
    # Everything else, targets included, is the true track and unchanged.
    for name in ("tracks", "targets", "positives", "feedback", "skip_targets"):
        assert torch.equal(getattr(batch, name), getattr(plain, name)), name


def test_oov_inputs_share_and_masks():
    # Counts are over all training windows: in 500 copies c and d are not rare.
    batch, _ = _one_batch(_oov_sessions() * 500, oov_share=0.3)
    assert not (batch.item_ids == OOV_ID).any()
    # 2000 singletons t_i after a frequent a: about 30% of them read OOV.
    sessions = [Session(f"s{i}", ("a", f"t{i}"), (False, False)) for i in range(2000)]
    vocab = Vocabulary(("a", *(f"t{i}" for i in range(2000))))
    windows = build_windows(sessions, vocab, max_seq_len=2)
    for backbone in ("sasrec", "bert4rec"):
        config = TrainConfig().replace(
            batch_size=4000, max_seq_len=2, oov_share=0.3, backbone=backbone
        )
        (batch,) = epoch_batches(windows, config, torch.Generator().manual_seed(0))
        rare = batch.tracks != vocab.index("a")
        oov = batch.item_ids == OOV_ID
        assert not oov[~rare].any()
        unmasked = rare & (batch.item_ids != MASK_ID)
        assert 0.27 < float(oov[unmasked].float().mean()) < 0.33
        if backbone == "bert4rec":  # a masked input stays masked
            assert (
                (batch.item_ids == MASK_ID) == (batch.feedback == FEEDBACK_MASK)
            ).all()


def test_oov_inputs_draw_after_the_other_randomness():
    sessions = _oov_sessions() * 3
    for backbone in ("sasrec", "bert4rec"):
        with_oov, _ = _one_batch(sessions, oov_share=0.5, backbone=backbone)
        without, _ = _one_batch(sessions, backbone=backbone)
        # Same shuffle, same masks: only OOV replaced some inputs.
        assert torch.equal(with_oov.tracks, without.tracks)
        changed = with_oov.item_ids != without.item_ids
        assert (with_oov.item_ids[changed] == OOV_ID).all()
        assert torch.equal(with_oov.targets, without.targets)
