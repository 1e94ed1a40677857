"""Validation ranks on a large catalogue from a sample of it: the head exactly, a
uniform sample of the tail, and the session's own tracks.

Full ranking scores every track for every example (``training.evaluation``): its
cost grows with the catalogue, and on 100k tracks it is most of an epoch's wall
time. Here the rank of the target, the number of other tracks scoring at least as
high as it (ties count against it, as in full ranking), is counted

- exactly over the ``num_head`` most frequent training tracks (the vocabulary's
  first indices), where the tracks that outrank a target mostly are;
- exactly over the tracks of the example's history, with the session policy
  applied (excluded tracks never outrank, penalised ones lose their penalty);
- over ``num_tail`` tracks drawn without replacement from the rest of the
  catalogue, each standing for ``tail size / num_tail`` tracks (an unbiased
  estimate of the tail's count; history tracks and the target drawn there are
  left out of it).

Ranks so estimated are real numbers; HR/NDCG/MRR@k are computed from them as from
exact ranks (``training.metrics``). With a head covering every track, or a tail
sample as large as the tail, the ranks are the full ranking's exactly (tested).
The estimate's error against full ranking on the synthetic 100k catalogue is in
docs/TRAINING_SCALE.md; the trainer validates this way from
``SAMPLED_MIN_TRACKS`` tracks on (:func:`validation_ranking`).

Dimension legend: B examples in a batch, D hidden dim, C head tracks, N sampled
tail tracks, H distinct history tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from skiprec.policy import SessionPolicy
from skiprec.vocab import NUM_SPECIAL, OOV_ID, Vocabulary
from training.evaluation import (
    History,
    RankedExamples,
    encode_examples,
    history_table,
)
from training.model import SessionEncoder
from training.scoring import TorchScorer
from training.splits import EvalExample

# From this many tracks on, the trainer's validation ranks are sampled.
SAMPLED_MIN_TRACKS = 50_000
NUM_HEAD = 2_000
NUM_TAIL = 8_000


@dataclass(frozen=True)
class SampledRanking:
    """How many tracks are ranked exactly (head) and by sample (tail)."""

    num_head: int = NUM_HEAD
    num_tail: int = NUM_TAIL
    seed: int = 0

    def to_dict(self) -> dict[str, int | str]:
        return {
            "ranking": "sampled",
            "num_head": self.num_head,
            "num_tail": self.num_tail,
            "seed": self.seed,
        }


def validation_ranking(vocab: Vocabulary) -> SampledRanking | None:
    """The sampled ranking for a catalogue of ``SAMPLED_MIN_TRACKS`` or more, else
    None (full ranking)."""
    return SampledRanking() if vocab.num_tracks >= SAMPLED_MIN_TRACKS else None


def sampled_ranks(
    model: SessionEncoder,
    examples: Sequence[EvalExample],
    vocab: Vocabulary,
    ranking: SampledRanking,
    policy: SessionPolicy = SessionPolicy(),
    batch_size: int = 512,
) -> RankedExamples:
    """Estimated 0-based ranks of each example's target under ``policy``, as
    ``training.evaluation.rank_examples`` returns the exact ones (``inf`` for an
    OOV or excluded target). The model is scored by its logits alone (no prior,
    no skip term: what validation during training ranks by)."""
    scorer = TorchScorer(model, batch_size)
    table = model.item_emb.weight.detach().float().cpu()  # [V, D]
    head_end = min(NUM_SPECIAL + ranking.num_head, vocab.size)
    head = torch.arange(NUM_SPECIAL, head_end)
    tail_size = vocab.size - head_end
    num_tail = min(ranking.num_tail, tail_size)
    generator = torch.Generator().manual_seed(ranking.seed)
    ranks, excluded, oov = [], [], []
    for start in range(0, len(examples), batch_size):
        histories, targets = encode_examples(
            examples[start : start + batch_size], vocab
        )
        queries = torch.from_numpy(scorer.queries(histories))  # [B, D]
        rows = _BatchRows(queries, table, torch.from_numpy(targets), histories, policy)
        count = rows.history_count() + rows.outranking(head)
        if num_tail:
            tail = torch.randperm(tail_size, generator=generator)[:num_tail]
            count += rows.outranking(tail + head_end) * (tail_size / num_tail)
        unknown = rows.target == OOV_ID
        removed = ~unknown & torch.isneginf(rows.bar[:, 0])
        ranks.append(torch.where(unknown | removed, torch.inf, count).numpy())
        excluded.append(removed.numpy())
        oov.append(unknown.numpy())
    return RankedExamples(
        policies=(policy,),
        ranks=np.concatenate(ranks)[None, :] if ranks else np.zeros((1, 0)),
        oov=np.concatenate(oov) if oov else np.zeros(0, dtype=bool),
        excluded=(
            np.concatenate(excluded)[None, :] if excluded else np.zeros((1, 0), bool)
        ),
    )


class _BatchRows:
    """One batch of examples: their targets' policy-adjusted scores (``bar``) and
    the counts of the tracks that reach them."""

    def __init__(
        self,
        queries: torch.Tensor,
        table: torch.Tensor,
        target: torch.Tensor,
        histories: Sequence[History],
        policy: SessionPolicy,
    ) -> None:
        self.queries, self.table, self.target = queries, table, target
        items, skipped_seen, played_seen, valid = (
            torch.from_numpy(a) for a in history_table(histories)
        )  # [B, H]
        self.items, self.valid = items, valid
        # Scores in float32 as the model gives them; policy penalties in float64,
        # as full ranking subtracts them.
        target_score = (queries * table[target]).sum(dim=1).double()  # [B]
        # [B, 1, D] * [B, H, D] -> [B, H]
        history_score = queries[:, None, :].mul(table[items]).sum(dim=2).double()
        banned = valid & (
            (skipped_seen & (policy.skipped == "exclude"))
            | (played_seen & (policy.played == "exclude"))
        )
        penalty = torch.where(played_seen, policy.penalty(False), 0.0) + torch.where(
            skipped_seen, policy.penalty(True), 0.0
        )
        unrankable = banned | ~valid
        self.adjusted = torch.where(unrankable, -torch.inf, history_score - penalty)
        self.is_target = valid & (items == target[:, None])  # [B, H]
        column = self.is_target.int().argmax(dim=1)  # [B] the target's, if there
        own_score = self.adjusted[torch.arange(len(target)), column]
        in_history = self.is_target.any(dim=1)
        self.bar = torch.where(in_history, own_score, target_score)[:, None]  # [B, 1]

    def history_count(self) -> torch.Tensor:
        """float64 [B]: the row's other history tracks that reach its target."""
        reach = (self.adjusted >= self.bar) & ~self.is_target
        return reach.sum(dim=1).double()

    def outranking(self, candidates: torch.Tensor) -> torch.Tensor:
        """float64 [B]: ``candidates`` (int64 [K], distinct) outside the row's
        history, other than its target, that reach its target."""
        scores = (self.queries @ self.table[candidates].T).double()  # [B, K]
        # Each track's column among the candidates (-1: not one), so that the
        # row's own tracks are found in O(B H), not by comparing [B, K, H].
        column = torch.full((self.table.shape[0],), -1, dtype=torch.int64)
        column[candidates] = torch.arange(len(candidates))
        own = torch.cat([self.items, self.target[:, None]], dim=1)  # [B, H + 1]
        where = column[own]  # [B, H + 1]
        found = (where >= 0) & torch.cat(
            [self.valid, torch.ones_like(self.target[:, None], dtype=torch.bool)], 1
        )
        mine = torch.zeros(scores.shape, dtype=torch.bool)
        rows = torch.arange(len(own))[:, None].expand_as(where)
        mine[rows[found], where[found]] = True
        return ((scores >= self.bar) & ~mine).sum(dim=1).double()
