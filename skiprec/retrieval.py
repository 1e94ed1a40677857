"""Two-stage retrieval: ANN candidates, then exact scoring of those candidates only.

Torch-free; the exporter builds the index and measures recall with this module, and
the service ranks with it, so both run the same candidate rule:

1. ``query.onnx``: the encoded window -> the session's query vector (the last hidden
   state, whose inner product with a track's embedding is the model's logit) and the
   transition prior's successors of the last real track (PAD without a prior).
2. The usearch index (inner product over the tracks' embeddings, keys = vocabulary
   indices) -> the ``num_candidates`` tracks with the highest logits, approximately.
3. Candidates = those hits + the window's own tracks (a policy other than "exclude"
   may recommend them again) + the prior's successors (the prior can lift a track
   the logits alone rank low).
4. ``candidates.onnx``: the same scores ``model.onnx`` gives these tracks (logits,
   prior, skip term, exclusions at -inf, p_skip), computed for them alone.

Dimension legend: B batch, T sequence length, D hidden dim, C candidates per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

# ONNX Runtime loaded after usearch crashes the interpreter (a segfault on import,
# usearch 2.26 with onnxruntime 1.32), and whoever searches this index runs graphs
# too: load it first.
import onnxruntime  # noqa: F401
from numpy.typing import NDArray
from usearch.index import BatchMatches, Index

from skiprec.manifest import (
    CANDIDATES_OUTPUT_NAMES,
    DEFAULT_VECTOR_DTYPE,
    INPUT_CANDIDATES,
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    INPUT_QUERY,
    QUERY_OUTPUT_NAMES,
    VECTOR_DTYPES,
    RetrievalSpec,
    VectorDtype,
)
from skiprec.vocab import NUM_SPECIAL, PAD_ID

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float32]
Int8Array = NDArray[np.int8]
LIBRARY = "usearch"
METRIC = "ip"
# HNSW parameters (docs/BENCHMARKS.md, "ANN candidate generation", measured them).
CONNECTIVITY = 16
EXPANSION_ADD = 200
EXPANSION_SEARCH = 256
NUM_CANDIDATES = 200
# Shallower searches the export tries for batches that rank at most ``width`` tracks
# a request, cheapest first per width: (width, ANN hits, expansion). The full depth
# above serves the API's k up to 200; most requests ask for 10, and for those the
# expansion, not the number of hits, sets the recall (docs/BENCHMARKS.md, "A search
# depth that follows k").
SHALLOW_DEPTHS: tuple[tuple[int, int, int], ...] = tuple(
    (10, 50, expansion) for expansion in (64, 96, 128, 160, 192)
)


INT8_MAX = 127


@dataclass(frozen=True)
class BuiltIndex:
    data: bytes  # the serialised index
    scales: tuple[float, ...]  # an i8 index's ``dimension_scales``; () otherwise


def dimension_scales(tracks: FloatArray) -> FloatArray:
    """Each dimension's largest magnitude over the tracks' rows [N, D] (1 where
    every row is 0). An i8 index stores the rows divided by it and is searched with
    queries multiplied by it: every inner product stays the same, and each
    dimension gets the whole int8 range rather than the share that the widest
    dimension leaves it."""
    peak = np.abs(tracks).max(axis=0)
    return np.where(peak > 0, peak, 1.0).astype(np.float32)


def to_int8(vectors: FloatArray, per_row: bool) -> Int8Array:
    """``vectors`` [N, D] as int8 in [-127, 127], the largest magnitude at 127: one
    scale for the whole array (``per_row=False``, the tracks' rows, so that their
    inner products with any query keep their order) or one per row (queries, whose
    own scale orders nothing). An all-zero array or row stays zero.

    usearch's own conversion to i8 scales every vector to unit length, which would
    rank by cosine and drop the norm a track's logit carries, so vectors reach it
    as int8 already."""
    peak = np.abs(vectors).max(axis=1 if per_row else None, keepdims=per_row)
    scale = INT8_MAX / np.where(peak > 0, peak, 1.0)
    return np.clip(np.rint(vectors * scale), -INT8_MAX, INT8_MAX).astype(np.int8)


def build_index(
    embeddings: FloatArray,
    connectivity: int = CONNECTIVITY,
    expansion_add: int = EXPANSION_ADD,
    expansion_search: int = EXPANSION_SEARCH,
    vectors: VectorDtype = DEFAULT_VECTOR_DTYPE,
) -> BuiltIndex:
    """The index over the tracks' rows of the item table [V, D] (the special rows
    are left out: they are never recommended), its vectors stored in ``vectors``
    precision (one of ``VECTOR_DTYPES``); an i8 index stores them over
    ``dimension_scales``, which it returns."""
    if vectors not in VECTOR_DTYPES:
        raise ValueError(f"vectors must be one of {VECTOR_DTYPES}, got {vectors!r}")
    index = Index(
        ndim=embeddings.shape[1],
        metric=METRIC,
        dtype=vectors,
        connectivity=connectivity,
        expansion_add=expansion_add,
        expansion_search=expansion_search,
    )
    keys = np.arange(NUM_SPECIAL, embeddings.shape[0], dtype=np.uint64)
    tracks = np.ascontiguousarray(embeddings[NUM_SPECIAL:])
    scales: tuple[float, ...] = ()
    stored: FloatArray | Int8Array = tracks
    if vectors == "i8":
        per_dimension = dimension_scales(tracks)
        scales = tuple(per_dimension.tolist())
        stored = to_int8(tracks / per_dimension, per_row=False)
    # One thread: the build is then the same on every machine.
    index.add(keys, stored, threads=1)
    data = index.save()  # no path: the bytes
    assert data is not None
    return BuiltIndex(bytes(data), scales)


def load_index(data: bytes, spec: RetrievalSpec) -> Index:
    """The index from its bundle bytes, with the manifest's search depth."""
    index = Index.restore(data)
    if index is None:
        raise ValueError("not a usearch index")
    # The setter exists; usearch declares it in an order mypy reads as read-only.
    index.expansion_search = spec.expansion_search  # type: ignore[misc]
    return index


@dataclass(frozen=True)
class Retrieval:
    """A bundle's two-stage path: its two graphs (ONNX Runtime sessions) and index."""

    query_session: Any
    candidates_session: Any
    index: Index
    spec: RetrievalSpec

    @cached_property
    def _query_scales(self) -> FloatArray:
        """An i8 index's ``RetrievalSpec.scales`` as the array each query is
        multiplied by, built once rather than per search."""
        return np.asarray(self.spec.scales, dtype=np.float32)

    def encode(
        self, item_ids: IntArray, feedback: IntArray
    ) -> tuple[FloatArray, IntArray]:
        """Query vectors [B, D] and the prior's successors [B, N] of the windows."""
        query, successors = self.query_session.run(
            list(QUERY_OUTPUT_NAMES),
            {INPUT_ITEM_IDS: item_ids, INPUT_FEEDBACK: feedback},
        )
        return query, successors

    def candidates(
        self,
        query: FloatArray,
        item_ids: IntArray,
        successors: IntArray,
        exclude_ids: IntArray,
        width: int | None = None,
    ) -> IntArray:
        """Per row: ANN hits, window tracks and successors, distinct, PAD-filled to
        the widest row: [B, C]. ``width``: the most tracks a row will rank, which
        picks the search's depth (``RetrievalSpec.depth``; ``None``: the full one).

        Not thread-safe: usearch takes the depth from the index, not the call."""
        num_candidates, expansion = self.spec.depth(width)
        # Excluded tracks will score -inf: search deeper by as many, so that they do
        # not take the places of rankable ones.
        excluded = int((exclude_ids >= NUM_SPECIAL).sum(axis=1).max(initial=0))
        count = min(num_candidates + excluded, len(self.index))
        if self.index.expansion_search != expansion:
            self.index.expansion_search = expansion  # type: ignore[misc]
        searched: FloatArray | Int8Array = query
        if self.spec.vectors == "i8":
            searched = to_int8(query * self._query_scales, per_row=True)
        matches = self.index.search(searched, count, threads=1)
        if isinstance(matches, BatchMatches):
            hits = np.asarray(matches.keys, dtype=np.int64)  # [B, count]
            found = np.asarray(matches.counts).tolist()
        else:  # one query: a flat result
            hits = np.asarray(matches.keys, dtype=np.int64)[None, :]
            found = [hits.shape[1]]
        rows = []
        for row in range(len(query)):
            ids = np.concatenate(
                [hits[row, : found[row]], item_ids[row], successors[row]]
            )
            rows.append(np.unique(ids[ids >= NUM_SPECIAL]))
        width = max(1, max(len(r) for r in rows))
        out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        for row, ids in enumerate(rows):
            out[row, : len(ids)] = ids
        return out

    def score(
        self,
        query: FloatArray,
        item_ids: IntArray,
        feedback: IntArray,
        exclude_ids: IntArray,
        candidate_ids: IntArray,
    ) -> tuple[FloatArray, FloatArray]:
        """``model.onnx``'s candidate_scores and candidate_p_skip of the candidates."""
        scores, p_skip = self.candidates_session.run(
            list(CANDIDATES_OUTPUT_NAMES),
            {
                INPUT_QUERY: query,
                INPUT_ITEM_IDS: item_ids,
                INPUT_FEEDBACK: feedback,
                INPUT_EXCLUDE: exclude_ids,
                INPUT_CANDIDATES: candidate_ids,
            },
        )
        return scores, p_skip

    def rank(
        self,
        item_ids: IntArray,
        feedback: IntArray,
        exclude_ids: IntArray,
        width: int | None = None,
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        """Both stages: (candidate ids [B, C], their scores, their p_skip), each row
        best first; PAD fill and excluded tracks score -inf at the end. ``width``
        as ``candidates`` takes it."""
        query, successors = self.encode(item_ids, feedback)
        candidate_ids = self.candidates(query, item_ids, successors, exclude_ids, width)
        scores, p_skip = self.score(
            query, item_ids, feedback, exclude_ids, candidate_ids
        )
        order = np.argsort(-scores, axis=1, kind="stable")  # [B, C]
        return (
            np.take_along_axis(candidate_ids, order, axis=1),
            np.take_along_axis(scores, order, axis=1),
            np.take_along_axis(p_skip, order, axis=1),
        )
