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
from skiprec.vocab import MASK_ID, PAD_ID, Vocabulary
from training.batching import build_windows, epoch_batches, session_skips
from training.config import TrainConfig
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
