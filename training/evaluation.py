"""Offline evaluation harness: any ``Scorer`` over ``EvalExample``s -> metrics.

The ranking rules are the live service's: specials (PAD/OOV/MASK) are never ranked,
and the session policy is the one the service applies (``skiprec.policy``: tracks
skipped or played earlier in the session excluded, penalised or left alone).
Excluded items get score -inf before ranking, penalised ones lose their penalty; a
target that is OOV or excluded cannot be recommended at all and counts as a miss.

Full ranking over the whole catalogue is the default. ``sampled_negatives=N`` ranks
the target among N seeded random tracks instead, as many papers do; those numbers are
much higher and not comparable with full-ranking ones.

``rank_examples`` scores every example once and ranks it under several policies at
once (a policy only moves the few tracks of the history, so the rest of the row is
compared once); ``evaluate`` is its one-policy summary. ``session_ids`` and
``previous_skipped`` give the per-example facts that paired tests and the
after-a-play / after-a-skip split need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from skiprec.encoding import encode_graded_events, is_skip_code
from skiprec.policy import SessionPolicy
from skiprec.vocab import NUM_SPECIAL, OOV_ID, Vocabulary
from training.metrics import summarize
from training.splits import EvalExample

# Rows of random keys drawn at once in sampled mode, to bound memory on big catalogues.
_SAMPLING_CELLS = 4_000_000

History = Sequence[tuple[int, int]]


class Scorer(Protocol):
    """Scores every vocabulary index for the next event of each history."""

    def score(self, histories: Sequence[History]) -> np.ndarray:
        """Histories of ``(item_index, feedback_code)``, oldest first -> [B, V]."""
        ...


@runtime_checkable
class SkipScorer(Protocol):
    """A scorer that also predicts whether a given next track will be skipped."""

    def p_skip(self, histories: Sequence[History], targets: np.ndarray) -> np.ndarray:
        """P(skip) of track ``targets[b]`` (int [B], vocabulary indices, OOV_ID for
        an unknown track) served after ``histories[b]``; float [B] in [0, 1], NaN
        everywhere for a model without a skip head."""
        ...


class LogScores:
    """A count-valued scorer (the baselines) on a log scale.

    Ranks are unchanged (log is increasing; a zero count becomes -inf, unrankable),
    but a ``penalize`` policy then subtracts in log units for every scorer alike, as
    it does from the model's logits: ``penalty = log 2`` halves a track's odds.
    """

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def score(self, histories: Sequence[History]) -> np.ndarray:
        scores = np.asarray(self.scorer.score(histories), dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.log(scores)


def encode_examples(
    examples: Sequence[EvalExample], vocab: Vocabulary
) -> tuple[list[list[tuple[int, int]]], np.ndarray]:
    """Encoded histories and target indices (int64 [B], OOV_ID when unknown)."""
    # Grades are encoded when the data has them; a scorer whose model reads
    # only play/skip coarsens them (skiprec.encoding.binary_code).
    histories = [
        encode_graded_events(e.history, e.history_levels, vocab) for e in examples
    ]
    if any(not h for h in histories):
        raise ValueError("every evaluation example needs a non-empty history")
    targets = np.array([vocab.index(e.target) for e in examples], dtype=np.int64)
    return histories, targets


def apply_policy(
    scores: np.ndarray,
    histories: Sequence[History],
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


def history_table(
    histories: Sequence[History],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct real tracks of each history, padded: items int64 [B, H] (pad 0),
    skipped_seen / played_seen / valid bool [B, H]."""
    seen: list[dict[int, tuple[bool, bool]]] = []
    for history in histories:
        row: dict[int, tuple[bool, bool]] = {}
        for index, code in history:
            if index >= NUM_SPECIAL:
                skipped, played = row.get(index, (False, False))
                if is_skip_code(code):
                    skipped = True
                else:
                    played = True
                row[index] = (skipped, played)
        seen.append(row)
    width = max((len(row) for row in seen), default=0) or 1
    items = np.zeros((len(seen), width), dtype=np.int64)
    skipped_seen = np.zeros((len(seen), width), dtype=bool)
    played_seen = np.zeros((len(seen), width), dtype=bool)
    valid = np.zeros((len(seen), width), dtype=bool)
    for b, row in enumerate(seen):
        n = len(row)
        if n:
            items[b, :n] = list(row)
            flags = np.array(list(row.values()), dtype=bool)  # [n, 2]
            skipped_seen[b, :n], played_seen[b, :n] = flags[:, 0], flags[:, 1]
            valid[b, :n] = True
    return items, skipped_seen, played_seen, valid


def policy_ranks(
    scores: np.ndarray,
    histories: Sequence[History],
    targets: np.ndarray,
    policies: Sequence[SessionPolicy],
) -> tuple[np.ndarray, np.ndarray]:
    """0-based target ranks under each policy: float [P, B] (``inf`` = unrankable)
    and whether the policy removed a known target: bool [P, B].

    Equal, policy by policy, to ``apply_policy`` then
    ``training.metrics.ranks_from_scores`` (ties count against the target), without
    copying the row per policy: the tracks outside the history are compared with the
    target once, the history's few tracks per policy.

    Args:
        scores: float [B, V], specials already -inf; not modified.
        histories: B encoded histories (``(item_index, feedback_code)``).
        targets: int [B], the target's column; negative = cannot be ranked.
        policies: P policies.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    num_rows = scores.shape[0]
    rows = np.arange(num_rows)
    items, skipped_seen, played_seen, valid = history_table(histories)  # [B, H]
    known = targets >= 0
    safe_targets = np.where(known, targets, 0)
    target_scores = scores[rows, safe_targets]  # [B]
    is_target = valid & (items == safe_targets[:, None]) & known[:, None]  # [B, H]
    in_history = is_target.any(axis=1)  # [B]
    target_column = is_target.argmax(axis=1)  # [B]

    history_scores = np.where(valid, scores[rows[:, None], items], -np.inf)  # [B, H]
    outside = scores.copy()  # [B, V]: the row without its history's tracks
    outside[np.broadcast_to(rows[:, None], items.shape)[valid], items[valid]] = -np.inf
    # Tracks outside the history keep their score under every policy; the target
    # among them counts itself once.
    fixed_count = (outside >= target_scores[:, None]).sum(axis=1) - 1  # [B]
    moved = np.flatnonzero(in_history)

    ranks = np.full((len(policies), num_rows), np.inf)
    excluded = np.zeros((len(policies), num_rows), dtype=bool)
    for p, policy in enumerate(policies):
        banned = valid & (
            (skipped_seen & (policy.skipped == "exclude"))
            | (played_seen & (policy.played == "exclude"))
        )
        penalty = np.where(played_seen, policy.penalty(False), 0.0) + np.where(
            skipped_seen, policy.penalty(True), 0.0
        )
        adjusted = np.where(banned, -np.inf, history_scores - penalty)  # [B, H]
        target_adjusted = np.where(
            in_history, adjusted[rows, target_column], target_scores
        )  # [B]
        count = fixed_count.copy()
        if moved.size:
            count[moved] = (outside[moved] >= target_adjusted[moved, None]).sum(axis=1)
        count += ((adjusted >= target_adjusted[:, None]) & valid & ~is_target).sum(
            axis=1
        )
        rankable = known & np.isfinite(target_adjusted)
        ranks[p, rankable] = count[rankable]
        excluded[p] = known & np.isneginf(target_adjusted)
    return ranks, excluded


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


@dataclass(frozen=True)
class RankedExamples:
    """Per-example ranks of one scorer under several policies."""

    policies: tuple[SessionPolicy, ...]
    ranks: np.ndarray  # float [P, N], 0-based, inf = a miss
    oov: np.ndarray  # bool [N]: target unknown to the vocabulary
    excluded: np.ndarray  # bool [P, N]: known target removed by the policy


def rank_examples(
    scorer: Scorer,
    examples: Sequence[EvalExample],
    vocab: Vocabulary,
    policies: Sequence[SessionPolicy] = (SessionPolicy(),),
    batch_size: int = 512,
    sampled_negatives: int | None = None,
    seed: int = 0,
) -> RankedExamples:
    """Score each example once and rank its target under every policy.

    ``sampled_negatives`` ranks among the target and that many seeded random tracks
    (the same draws for every policy, and the same as ``evaluate`` with that seed).
    """
    if sampled_negatives is not None and sampled_negatives < 1:
        raise ValueError("sampled_negatives must be >= 1 (or None for full ranking)")
    policies = tuple(policies)
    rng = np.random.default_rng(seed)
    all_ranks: list[np.ndarray] = []
    all_excluded: list[np.ndarray] = []
    all_oov: list[np.ndarray] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        histories, targets = encode_examples(batch, vocab)
        oov = targets == OOV_ID
        all_oov.append(oov)
        targets[oov] = -1

        scores = np.array(scorer.score(histories), dtype=np.float64)  # copy [B, V]
        if scores.shape != (len(batch), vocab.size):
            raise ValueError(
                f"scorer returned {scores.shape}, expected ({len(batch)}, {vocab.size})"
            )
        scores[:, :NUM_SPECIAL] = -np.inf
        if sampled_negatives is not None:
            # Only the target and its negatives stay rankable: the rank among them.
            known = targets >= 0
            safe_targets = np.where(known, targets, NUM_SPECIAL)
            negatives = _sample_candidates(
                rng, safe_targets, vocab.num_tracks, sampled_negatives
            )
            candidates = np.concatenate([safe_targets[:, None], negatives], axis=1)
            kept = np.full_like(scores, -np.inf)
            rows = np.arange(len(batch))[:, None]
            kept[rows, candidates] = scores[rows, candidates]
            scores = kept
        ranks, excluded = policy_ranks(scores, histories, targets, policies)
        all_ranks.append(ranks)
        all_excluded.append(excluded)

    return RankedExamples(
        policies=policies,
        ranks=(
            np.concatenate(all_ranks, axis=1)
            if all_ranks
            else np.zeros((len(policies), 0))
        ),
        oov=np.concatenate(all_oov) if all_oov else np.zeros(0, dtype=bool),
        excluded=(
            np.concatenate(all_excluded, axis=1)
            if all_excluded
            else np.zeros((len(policies), 0), dtype=bool)
        ),
    )


def target_skipped(examples: Sequence[EvalExample]) -> np.ndarray:
    """Whether each example's target was skipped; bool [N]."""
    return np.array([e.target_skipped for e in examples], dtype=bool)


def previous_skipped(examples: Sequence[EvalExample]) -> np.ndarray:
    """Whether the event just before each target was skipped; bool [N]."""
    return np.array(
        [bool(e.history[-1][1]) if e.history else False for e in examples], dtype=bool
    )


def session_ids(examples: Sequence[EvalExample]) -> np.ndarray:
    """The session of each example, numbered from 0 in order; int64 [N].

    Examples carry no session id. Every split lists a session's examples together,
    and within a session each history is the previous one plus its target
    (``training.splits.session_examples``); anything else starts a new session, so
    leave-one-out examples (one per session) each get their own.
    """
    ids = np.zeros(len(examples), dtype=np.int64)
    current = -1
    previous: EvalExample | None = None
    for n, example in enumerate(examples):
        continues = (
            previous is not None
            and len(example.history) == len(previous.history) + 1
            and example.history[-1] == (previous.target, previous.target_skipped)
            and example.history[:-1] == previous.history
        )
        if not continues:
            current += 1
        ids[n] = current
        previous = example
    return ids


def summarize_ranks(
    ranked: RankedExamples, examples: Sequence[EvalExample], policy_index: int = 0
) -> dict[str, float]:
    """``training.metrics.summarize`` of one policy's ranks (with the
    after-a-play / after-a-skip split), plus ``num_oov_targets`` and
    ``num_excluded_targets`` (both counted as misses)."""
    metrics = summarize(
        ranked.ranks[policy_index],
        target_skipped(examples),
        previous_skipped=previous_skipped(examples),
    )
    metrics["num_oov_targets"] = float(ranked.oov.sum())
    metrics["num_excluded_targets"] = float(ranked.excluded[policy_index].sum())
    return metrics


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
    ranked = rank_examples(
        scorer, examples, vocab, (policy,), batch_size, sampled_negatives, seed
    )
    return summarize_ranks(ranked, examples)


def skip_probabilities(
    scorer: SkipScorer,
    examples: Sequence[EvalExample],
    vocab: Vocabulary,
    batch_size: int = 512,
) -> np.ndarray:
    """The scorer's P(skip) of each example's actual next track; float [N]."""
    chunks = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        histories, targets = encode_examples(batch, vocab)
        p = np.asarray(scorer.p_skip(histories, targets), dtype=np.float64)
        if p.shape != (len(batch),):
            raise ValueError(f"p_skip returned {p.shape}, expected ({len(batch)},)")
        chunks.append(p)
    return np.concatenate(chunks) if chunks else np.zeros(0)
