"""Non-neural baselines, each a ``training.evaluation.Scorer``.

- ``PopularityScorer``: training-split counts, the same for every history.
- ``MarkovScorer``: first-order transitions last track -> next track; unseen last
  tracks (and ties) fall back to popularity. ``played_only=True`` counts only
  transitions into played (non-skipped) tracks: the cheapest skip-aware model.
- ``CooccurrenceScorer``: item co-occurrence within a window, summed over the whole
  history with recency decay (a session-kNN in item space); optionally skipped
  history events count less.

Counts are kept as sparse rows (CSR arrays, numpy only), so memory is linear in the
number of distinct pairs, and scoring a batch is one ``np.bincount``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skiprec.encoding import is_skip_code
from skiprec.vocab import NUM_SPECIAL, Vocabulary
from training.data import Session

# Popularity enters the other scorers scaled to at most this: far below any count, so
# it only orders items the history says nothing about.
BACKOFF_WEIGHT = 1e-6


def _popularity_vector(sessions: Sequence[Session], vocab: Vocabulary) -> np.ndarray:
    """Occurrences of every vocabulary index in ``sessions``; float [V], specials 0."""
    indices = [i for s in sessions for i in vocab.indices(s.track_ids)]
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=vocab.size)
    counts = counts.astype(np.float64)
    counts[:NUM_SPECIAL] = 0.0
    return counts


def _backoff(popularity: np.ndarray) -> np.ndarray:
    top = popularity.max(initial=0.0)
    return popularity * (BACKOFF_WEIGHT / top) if top > 0 else popularity.copy()


@dataclass(frozen=True)
class _SparseRows:
    """CSR: row ``r`` has ``values[indptr[r]:indptr[r+1]]`` at ``columns[...]``."""

    indptr: np.ndarray  # int64 [V + 1]
    columns: np.ndarray  # int64 [nnz]
    values: np.ndarray  # float64 [nnz]

    @classmethod
    def from_pairs(
        cls, rows: np.ndarray, columns: np.ndarray, weights: np.ndarray, size: int
    ) -> _SparseRows:
        """Sum the weights of duplicate (row, column) pairs."""
        keys = rows.astype(np.int64) * size + columns.astype(np.int64)
        unique, inverse = np.unique(keys, return_inverse=True)
        values = np.bincount(inverse, weights=weights, minlength=len(unique))
        indptr = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(np.bincount(unique // size, minlength=size), out=indptr[1:])
        return cls(indptr, unique % size, values)

    def weighted_sum(
        self,
        out: np.ndarray,
        out_rows: np.ndarray,
        items: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """``out[out_rows[j]] += weights[j] * row(items[j])`` for all j; out [B, V]."""
        starts = self.indptr[items]
        lengths = self.indptr[items + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return
        # Positions of every gathered entry: each row's start + 0..length-1.
        owner = np.repeat(np.arange(len(items)), lengths)
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = starts[owner] + offsets
        size = out.shape[1]
        flat = out_rows[owner] * size + self.columns[positions]
        out += np.bincount(
            flat, weights=weights[owner] * self.values[positions], minlength=out.size
        ).reshape(out.shape)


class PopularityScorer:
    """Most frequent training tracks first, whatever the history."""

    def __init__(self, popularity: np.ndarray) -> None:
        self.popularity = popularity

    @classmethod
    def fit(cls, sessions: Sequence[Session], vocab: Vocabulary) -> PopularityScorer:
        return cls(_popularity_vector(sessions, vocab))

    def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        return np.tile(self.popularity, (len(histories), 1))


class MarkovScorer:
    """P(next | last track) by counting; popularity breaks ties and covers unseen."""

    def __init__(self, transitions: _SparseRows, popularity: np.ndarray) -> None:
        self.transitions = transitions
        self.backoff = _backoff(popularity)

    @classmethod
    def fit(
        cls, sessions: Sequence[Session], vocab: Vocabulary, played_only: bool = False
    ) -> MarkovScorer:
        sources: list[int] = []
        targets: list[int] = []
        for session in sessions:
            indices = vocab.indices(session.track_ids)
            for t in range(1, len(indices)):
                if not (played_only and session.skipped[t]):
                    sources.append(indices[t - 1])
                    targets.append(indices[t])
        transitions = _SparseRows.from_pairs(
            np.asarray(sources, dtype=np.int64),
            np.asarray(targets, dtype=np.int64),
            np.ones(len(sources)),
            vocab.size,
        )
        return cls(transitions, _popularity_vector(sessions, vocab))

    def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        out = np.tile(self.backoff, (len(histories), 1))
        last = np.array([h[-1][0] for h in histories], dtype=np.int64)
        self.transitions.weighted_sum(
            out, np.arange(len(histories)), last, np.ones(len(histories))
        )
        return out


class CooccurrenceScorer:
    """Sum over the history of each item's co-occurrence row, recent events weighted up.

    Training pairs (a at t, b at t + d), ``1 <= d <= window``, add ``1/d`` to
    C[a, b] and ``backward_weight/d`` to C[b, a]. A history h scores
    ``sum_s decay**(len(h)-1-s) * w_s * C[h_s] / sqrt(n(h_s))`` where n is the
    item's training count (so hub tracks do not drown the rest) and ``w_s`` is
    ``skip_weight`` for skipped events, else 1.
    """

    def __init__(
        self,
        cooccurrence: _SparseRows,
        popularity: np.ndarray,
        decay: float,
        skip_weight: float,
        max_history: int,
    ) -> None:
        self.cooccurrence = cooccurrence
        self.backoff = _backoff(popularity)
        self.source_norm = 1.0 / np.sqrt(np.maximum(popularity, 1.0))
        self.decay = decay
        self.skip_weight = skip_weight
        self.max_history = max_history

    @classmethod
    def fit(
        cls,
        sessions: Sequence[Session],
        vocab: Vocabulary,
        window: int = 5,
        backward_weight: float = 0.5,
        decay: float = 0.6,
        skip_weight: float = 1.0,
        max_history: int = 50,
    ) -> CooccurrenceScorer:
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        encoded = [
            np.asarray(vocab.indices(s.track_ids), dtype=np.int64) for s in sessions
        ]
        for distance in range(1, window + 1):
            before = [e[:-distance] for e in encoded if len(e) > distance]
            after = [e[distance:] for e in encoded if len(e) > distance]
            if not before:
                break
            first, second = np.concatenate(before), np.concatenate(after)
            rows += [first, second]
            cols += [second, first]
            weights += [
                np.full(len(first), 1.0 / distance),
                np.full(len(first), backward_weight / distance),
            ]
        cooccurrence = _SparseRows.from_pairs(
            np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
            np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64),
            np.concatenate(weights) if weights else np.zeros(0),
            vocab.size,
        )
        return cls(
            cooccurrence,
            _popularity_vector(sessions, vocab),
            decay=decay,
            skip_weight=skip_weight,
            max_history=max_history,
        )

    def score(self, histories: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
        out = np.tile(self.backoff, (len(histories), 1))
        tails = [list(h)[-self.max_history :] for h in histories]
        lengths = np.array([len(t) for t in tails], dtype=np.int64)
        items = np.array([i for t in tails for i, _ in t], dtype=np.int64)
        skipped = np.array([is_skip_code(c) for t in tails for _, c in t], dtype=bool)
        owners = np.repeat(np.arange(len(tails)), lengths)
        age = np.repeat(np.cumsum(lengths), lengths) - 1 - np.arange(len(items))
        weights = self.decay**age * np.where(skipped, self.skip_weight, 1.0)
        weights *= self.source_norm[items]
        self.cooccurrence.weighted_sum(out, owners, items, weights)
        return out


BASELINES = ("popularity", "markov", "markov_played", "cooccurrence")


def fit_baseline(
    name: str, sessions: Sequence[Session], vocab: Vocabulary
) -> PopularityScorer | MarkovScorer | CooccurrenceScorer:
    """One of ``BASELINES`` fitted on the training sessions with default settings."""
    if name == "popularity":
        return PopularityScorer.fit(sessions, vocab)
    if name == "markov":
        return MarkovScorer.fit(sessions, vocab)
    if name == "markov_played":
        return MarkovScorer.fit(sessions, vocab, played_only=True)
    if name == "cooccurrence":
        return CooccurrenceScorer.fit(sessions, vocab)
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
