"""Negative samplers of the sampled softmax: their distributions and draws."""

import math

import pytest
import torch

from skiprec.vocab import NUM_SPECIAL, PAD_ID
from training.config import LossConfig
from training.negatives import (
    candidate_log_q,
    draw_negatives,
    needs_distribution,
    track_distribution,
    uniform_distribution,
)


def test_track_distribution_counts_tracks_not_padding_or_specials():
    tracks = torch.tensor([[PAD_ID, 3, 4], [1, 3, 3]])  # 1 = OOV
    probs = track_distribution(tracks, vocab_size=6)
    assert probs.tolist() == pytest.approx([0, 0, 0, 0.75, 0.25, 0])


def test_uniform_sampler_draws_as_before_the_popularity_sampler():
    # Same generator state -> the same negatives as torch.randint (old runs' draws).
    config = LossConfig(loss="sampled_softmax", num_negatives=50)
    drawn = draw_negatives(config, 40, None, torch.Generator().manual_seed(3))
    before = torch.randint(
        NUM_SPECIAL, 40, (50,), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(drawn, before)


def test_popularity_sampler_follows_the_track_distribution():
    probs = torch.tensor([0.0, 0.0, 0.0, 0.7, 0.2, 0.1, 0.0])
    config = LossConfig(
        loss="sampled_softmax", num_negatives=20000, negative_sampler="popularity"
    )
    drawn = draw_negatives(config, 7, probs, torch.Generator().manual_seed(0))
    share = torch.bincount(drawn, minlength=7).double() / len(drawn)
    assert share[:NUM_SPECIAL].sum() == 0 and share[6] == 0
    assert share[3:6].tolist() == pytest.approx([0.7, 0.2, 0.1], abs=0.015)


def test_candidate_log_q_of_popularity_and_in_batch_is_log_q_plus_a_constant():
    probs = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.3, 0.2])
    config = LossConfig(
        loss="sampled_softmax",
        num_negatives=8,
        negative_sampler="popularity",
        logq_correction=True,
    )
    # Both sources follow one distribution: Q = (N + M - 1) q.
    got = candidate_log_q(config, probs, num_targets=5)
    assert got[3:].tolist() == pytest.approx(
        [math.log(12 * p) for p in (0.5, 0.3, 0.2)], rel=1e-6
    )
    uniform = candidate_log_q(
        LossConfig(loss="sampled_softmax", num_negatives=6, logq_correction=True),
        probs,
        num_targets=5,
    )
    # Uniform negatives + in-batch targets: Q = N / 3 + (M - 1) q.
    assert uniform[3:].tolist() == pytest.approx(
        [math.log(2 + 4 * p) for p in (0.5, 0.3, 0.2)], rel=1e-6
    )
    assert uniform_distribution(6)[3:].tolist() == pytest.approx([1 / 3] * 3)


def test_only_the_popularity_sampler_and_the_correction_need_the_distribution():
    assert not needs_distribution(LossConfig(loss="sampled_softmax"))
    assert needs_distribution(
        LossConfig(loss="sampled_softmax", negative_sampler="popularity")
    )
    assert needs_distribution(LossConfig(loss="sampled_softmax", logq_correction=True))
