"""Offline evaluation harness: any ``Scorer`` over ``EvalExample``s -> metrics.

The ranking rules are the live service's: specials (PAD/OOV/MASK) are never ranked,
and the session policy is the one the service applies (``skiprec.policy``: tracks
skipped or played earlier in the session excluded, penalised or left alone).
Excluded items get score -inf before ranking, penalised ones lose their penalty; a
target that is OOV or excluded cannot be recommended at all and counts as a miss.

Full ranking over the whole catalogue is the default. ``sampled_negatives=N`` ranks
the target among N seeded random tracks instead, as many papers do; those numbers are
much higher and not comparable with full-ranking ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from skiprec.encoding import encode_events, is_skip_code
from skiprec.policy import SessionPolicy
from skiprec.vocab import NUM_SPECIAL, OOV_ID, Vocabulary
from training.metrics import ranks_from_scores, summarize
from training.splits import EvalExample

# Rows of random keys drawn at once in sampled mode, to bound memory on big catalogues.
_SAMPLING_CELLS = 4_000_000


class Scorer(Protocol):
    """Scores every vocabulary index for the next event of each history."""

    def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        """Histories of ``(item_index, feedback_code)``, oldest first -> [B, V]."""
        ...


def apply_policy(
    scores: np.ndarray,
    histories: Sequence[Sequence[tuple[int, int]]],
    policy: SessionPolicy,
) -> None:
    """Apply ``policy`` to float scores [B, V] in place, row ``b`` by ``histories[b]``:
    excluded tracks to -inf, penalised ones down by their penalty (specials untouched).
    """
    for row, history in enumerate(histories):
        events = [(i, is_skip_code(code)) for i, code in history if i >= NUM_SPECIAL]
        banned = list(policy.excluded(events))
        if banned:
            scores[row, banned] = -np.inf
        for index, penalty in policy.penalties(events).items():
            scores[row, index] -= penalty


def _sample_candidates(
    rng: np.random.Generator, targets: np.ndarray, num_tracks: int, count: int
) -> np.ndarray:
    """Per row, ``count`` distinct real tracks other than the target; [B, count]."""
    count = min(count, num_tracks - 1)
    rows_per_chunk = max(1, _SAMPLING_CELLS // max(num_tracks - 1, 1))
    chunks = []
    for start in range(0, len(targets), rows_per_chunk):
        keys = rng.random(
            (len(targets[start : start + rows_per_chunk]), num_tracks - 1)
        )
        # A uniformly random subset of size `count` of 0..num_tracks-2 per row ...
        offsets = (
            np.argpartition(keys, count - 1, axis=1)[:, :count]
            if count
            else keys[:, :0]
        )
        # ... mapped onto the real tracks with the target's slot skipped over.
        picked = offsets.astype(np.int64) + NUM_SPECIAL
        target = targets[start : start + rows_per_chunk, None]
        chunks.append(np.where(picked >= target, picked + 1, picked))
    return np.concatenate(chunks) if chunks else np.zeros((0, count), dtype=np.int64)


def evaluate(
    scorer: Scorer,
    examples: Sequence[EvalExample],
    vocab: Vocabulary,
    policy: SessionPolicy = SessionPolicy(),
    batch_size: int = 512,
    sampled_negatives: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Rank each example's target and summarise (see ``training.metrics.summarize``).

    Adds ``num_oov_targets`` and ``num_excluded_targets`` (both counted as misses).
    """
    if sampled_negatives is not None and sampled_negatives < 1:
        raise ValueError("sampled_negatives must be >= 1 (or None for full ranking)")
    rng = np.random.default_rng(seed)
    all_ranks: list[np.ndarray] = []
    num_oov = num_excluded = 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        histories = [encode_events(e.history, vocab) for e in batch]
        if any(not h for h in histories):
            raise ValueError("every evaluation example needs a non-empty history")
        targets = np.array([vocab.index(e.target) for e in batch], dtype=np.int64)
        oov = targets == OOV_ID
        num_oov += int(oov.sum())
        targets[oov] = -1

        scores = np.array(scorer.score(histories), dtype=np.float64)  # copy [B, V]
        if scores.shape != (len(batch), vocab.size):
            raise ValueError(
                f"scorer returned {scores.shape}, expected ({len(batch)}, {vocab.size})"
            )
        scores[:, :NUM_SPECIAL] = -np.inf
        apply_policy(scores, histories, policy)
        known = targets >= 0
        num_excluded += int(
            np.isneginf(scores[np.flatnonzero(known), targets[known]]).sum()
        )

        if sampled_negatives is None:
            all_ranks.append(ranks_from_scores(scores, targets))
            continue
        # Rank among [target, negatives...]: column 0 of the candidate matrix.
        safe_targets = np.where(known, targets, NUM_SPECIAL)
        negatives = _sample_candidates(
            rng, safe_targets, vocab.num_tracks, sampled_negatives
        )
        candidates = np.concatenate([safe_targets[:, None], negatives], axis=1)
        candidate_scores = np.take_along_axis(scores, candidates, axis=1)
        all_ranks.append(ranks_from_scores(candidate_scores, np.where(known, 0, -1)))

    ranks = np.concatenate(all_ranks) if all_ranks else np.zeros(0)
    metrics = summarize(
        ranks, np.array([e.target_skipped for e in examples], dtype=bool)
    )
    metrics["num_oov_targets"] = float(num_oov)
    metrics["num_excluded_targets"] = float(num_excluded)
    return metrics
