"""Outcomes of served lists: was the listener's next track in it, and at what rank.

One home for the arithmetic that the live service (``service/outcomes.py``, from its
Redis counters) and the offline = online check (``benchmarks/online_check.py``, from
offline ranks) both report, so the two sides cannot drift apart:

- ``attribute``: a served list and the next event -> an ``Outcome`` (0-based rank,
  or a miss; played or skipped);
- ``Tally``: outcomes counted by rank and by played/skipped, built from outcomes,
  from offline ranks (``tally_ranks``) or from the service's counters;
- ``summarize``: a tally's hit@k and played/skipped hit rates with Wilson score
  intervals, and ``difference`` for a variant against a control (Newcombe's hybrid
  score interval for a difference of two independent proportions).

A rate's denominator is the number of lists that were followed by an event (lists
nobody answered say nothing about the ranking). Torch-free.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_K = 10
CONFIDENCE_Z = 1.959963984540054  # two-sided 95%


@dataclass(frozen=True, slots=True)
class Outcome:
    """The next event after a served list: its track's 0-based rank in the list
    (None: not in it) and whether the listener skipped it."""

    rank: int | None
    skipped: bool


def attribute(served: Sequence[str], track_id: str, skipped: bool) -> Outcome:
    """The outcome of ``served`` (best first) when the next event is ``track_id``."""
    try:
        rank: int | None = list(served).index(track_id)
    except ValueError:
        rank = None
    return Outcome(rank, skipped)


@dataclass(frozen=True, slots=True)
class Tally:
    """Outcomes counted: lists followed by a play / by a skip, and the hits among
    them by ``(rank, skipped)``."""

    played: int = 0
    skipped: int = 0
    hits: Mapping[tuple[int, bool], int] = field(default_factory=dict)

    @property
    def lists(self) -> int:
        return self.played + self.skipped

    def hits_within(self, k: int, skipped: bool | None = None) -> int:
        """Hits at a rank below ``k``; only played (False) or skipped (True) ones
        when ``skipped`` is given."""
        return sum(
            count
            for (rank, was_skipped), count in self.hits.items()
            if rank < k and (skipped is None or was_skipped == skipped)
        )

    def __add__(self, other: Tally) -> Tally:
        hits = Counter(self.hits)
        hits.update(other.hits)
        return Tally(self.played + other.played, self.skipped + other.skipped, hits)


def tally(outcomes: Iterable[Outcome]) -> Tally:
    played = skipped = 0
    hits: Counter[tuple[int, bool]] = Counter()
    for outcome in outcomes:
        if outcome.skipped:
            skipped += 1
        else:
            played += 1
        if outcome.rank is not None:
            hits[outcome.rank, outcome.skipped] += 1
    return Tally(played, skipped, dict(hits))


def tally_ranks(ranks: Iterable[float], skipped: Iterable[bool]) -> Tally:
    """The tally of offline ranks (0-based floats, ``inf`` a miss, as
    ``training.evaluation`` returns them) and their targets' skip flags."""
    return tally(
        Outcome(int(rank) if math.isfinite(rank) else None, bool(was_skipped))
        for rank, was_skipped in zip(ranks, skipped, strict=True)
    )


@dataclass(frozen=True, slots=True)
class Rate:
    """``successes / trials`` with its Wilson score interval (None: no trials)."""

    successes: int
    trials: int
    value: float | None
    low: float
    high: float


def wilson(successes: int, trials: int, z: float = CONFIDENCE_Z) -> Rate:
    """The Wilson score interval: unlike the normal approximation it stays inside
    [0, 1] and keeps its coverage for rates near 0 or 1 and small ``trials``
    (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it)."""
    if trials == 0:
        return Rate(successes, 0, None, 0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    half /= denominator
    return Rate(successes, trials, p, max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class Difference:
    """``variant - control`` of two rates and its interval."""

    value: float | None
    low: float
    high: float


def difference(variant: Rate, control: Rate) -> Difference:
    """Newcombe's hybrid score interval (his method 10, 1998) for the difference of
    two independent proportions, built from each rate's Wilson interval (at the
    confidence those intervals were computed with)."""
    if variant.value is None or control.value is None:
        return Difference(None, -1.0, 1.0)
    d = variant.value - control.value
    low = d - math.hypot(variant.value - variant.low, control.high - control.value)
    high = d + math.hypot(variant.high - variant.value, control.value - control.low)
    return Difference(d, max(-1.0, low), min(1.0, high))


def summarize(counts: Tally, k: int = DEFAULT_K) -> dict[str, Rate]:
    """Per list followed by an event: the next track within the top ``k``
    (``hit``), within it and played (``hit_played``), within it and skipped
    (``hit_skipped``); and the skip share of the next events (``next_skipped``)."""
    lists = counts.lists
    return {
        "hit": wilson(counts.hits_within(k), lists),
        "hit_played": wilson(counts.hits_within(k, skipped=False), lists),
        "hit_skipped": wilson(counts.hits_within(k, skipped=True), lists),
        "next_skipped": wilson(counts.skipped, lists),
    }
