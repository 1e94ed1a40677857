"""Negatives of the sampled softmax: which tracks are drawn, with what probability.

Dimension legend: V item vocabulary (tracks + specials), N sampled negatives.

The uniform sampler draws every track alike (``torch.randint``, as every run before the
popularity sampler did, so those runs draw the same negatives); the popularity sampler
draws in proportion to a track's count among the training events, the distribution
the in-batch negatives (other rows' targets) follow too, so that one log-Q correction
covers both (``training.losses.log_expected_counts``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from skiprec.vocab import NUM_SPECIAL
from training.config import LossConfig
from training.losses import log_expected_counts


def track_distribution(tracks: Tensor, vocab_size: int) -> Tensor:
    """[V] each track's share of the training events; 0 for the special ids.

    Args:
        tracks: int64 [...] training events (padding and specials are not counted).
    """
    return count_distribution(
        torch.bincount(tracks.flatten(), minlength=vocab_size)[:vocab_size]
    )


def count_distribution(counts: Tensor) -> Tensor:
    """[V] each track's share of ``counts`` (int64 [V], per vocabulary index); 0
    for the special ids."""
    shares = counts.double()
    shares[:NUM_SPECIAL] = 0.0
    return (shares / shares.sum()).float()


def uniform_distribution(vocab_size: int) -> Tensor:
    """[V] 1 / (V - NUM_SPECIAL) for every track, 0 for the special ids."""
    probs = torch.full((vocab_size,), 1.0 / (vocab_size - NUM_SPECIAL))
    probs[:NUM_SPECIAL] = 0.0
    return probs


def draw_negatives(
    config: LossConfig,
    vocab_size: int,
    track_probs: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """int64 [N] the batch's shared negatives, drawn with replacement."""
    if config.negative_sampler == "uniform":
        return torch.randint(
            NUM_SPECIAL, vocab_size, (config.num_negatives,), generator=generator
        )
    if track_probs is None:
        raise ValueError("the popularity sampler needs the track distribution")
    return torch.multinomial(
        track_probs, config.num_negatives, replacement=True, generator=generator
    )


def candidate_log_q(
    config: LossConfig, track_probs: Tensor, num_targets: int
) -> Tensor:
    """[V] log Q(c) of the batch's candidates under ``config``'s sampler and in-batch
    setting, for a batch of ``num_targets`` target positions."""
    vocab_size = track_probs.shape[0]
    sampler = (
        track_probs
        if config.negative_sampler == "popularity"
        else uniform_distribution(vocab_size).to(track_probs.device)
    )
    return log_expected_counts(
        sampler,
        config.num_negatives,
        track_probs if config.in_batch_negatives else None,
        max(num_targets - 1, 0),
    )


def needs_distribution(config: LossConfig) -> bool:
    """Whether ``config`` draws or corrects with the track distribution."""
    return config.loss == "sampled_softmax" and (
        config.negative_sampler == "popularity" or config.logq_correction
    )
