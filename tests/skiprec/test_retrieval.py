"""skiprec.retrieval: an i8 index keeps every inner-product ranking but for rounding."""

from __future__ import annotations

import numpy as np
import onnxruntime  # noqa: F401  (before usearch: skiprec.retrieval says why)
import pytest
from usearch.index import Index

from skiprec.retrieval import Retrieval, build_index, dimension_scales, to_int8
from skiprec.vocab import NUM_SPECIAL, PAD_ID
from tests.conftest import retrieval_spec


def test_to_int8_scales_the_whole_array_or_each_row_to_127() -> None:
    vectors = np.array(
        [[0.5, -0.25, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0]],
        dtype=np.float32,
    )
    # one scale, 127 / 1.0: 63.5 and -31.75 round to the nearest (even) integer
    assert to_int8(vectors, per_row=False).tolist() == [
        [64, -32, 0, 127],
        [13, 25, 38, 51],
        [0, 0, 0, 0],
    ]
    # one scale per row: row 2 is 127 / 0.4; a zero row stays zero
    assert to_int8(vectors, per_row=True).tolist() == [
        [64, -32, 0, 127],
        [32, 64, 95, 127],
        [0, 0, 0, 0],
    ]
    assert to_int8(vectors, per_row=True).dtype == np.int8


def test_dimension_scales_are_each_dimensions_largest_magnitude() -> None:
    tracks = np.array([[0.5, -2.0, 0.0], [-0.25, 1.0, 0.0]], dtype=np.float32)
    # an all-zero dimension gets 1, not a division by zero
    assert dimension_scales(tracks).tolist() == [0.5, 2.0, 1.0]


def _table(rng: np.random.Generator) -> np.ndarray:
    """Tracks whose norms spread 30-fold, as a trained table's popularity spreads
    them (cosine and inner product then disagree on most of a top-10), and whose
    dimensions differ 100-fold in range, which the index's scales take out."""
    directions = rng.normal(size=(2000, 16)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = rng.uniform(0.1, 3.0, size=(2000, 1)).astype(np.float32)
    ranges = np.logspace(-1, 1, 16, dtype=np.float32)
    return directions * norms * ranges


def _recall(found: np.ndarray, queries: np.ndarray, table: np.ndarray) -> float:
    k = found.shape[1]
    exact = np.argsort(-(queries.astype(np.float64) @ table.T), axis=1)[:, :k]
    hits = [
        len(set(row.tolist()) & set((want + NUM_SPECIAL).tolist()))
        for row, want in zip(found, exact, strict=True)
    ]
    return sum(hits) / found.size


def test_an_i8_index_ranks_by_inner_product_where_unit_vectors_would_not() -> None:
    rng = np.random.default_rng(0)
    table = _table(rng)
    with_specials = np.concatenate([np.zeros((NUM_SPECIAL, 16), np.float32), table])
    queries = rng.normal(size=(50, 16)).astype(np.float32)

    built = build_index(with_specials, vectors="i8")
    assert built.scales == pytest.approx(dimension_scales(table).tolist())
    index = Index.restore(built.data)
    assert index is not None
    assert index.dtype.name == "I8"
    spec = retrieval_spec(
        vectors="i8", scales=built.scales, num_candidates=10, expansion_search=512
    )
    retrieval = Retrieval(None, None, index, spec)
    pad = np.full((len(queries), 1), PAD_ID, dtype=np.int64)
    found = retrieval.candidates(queries, pad, pad, pad)  # the hits, no window
    assert found.shape == (len(queries), 10)
    assert _recall(found, queries, table) >= 0.97

    # the same index type fed f32 rows: usearch scales each to unit length
    cosine = Index(ndim=16, metric="ip", dtype="i8", expansion_search=512)
    cosine.add(np.arange(NUM_SPECIAL, NUM_SPECIAL + len(table), dtype=np.uint64), table)
    found = np.asarray(cosine.search(queries, 10, threads=1).keys)
    assert _recall(found, queries, table) < 0.6


def test_an_index_precision_outside_the_supported_ones_is_refused() -> None:
    with pytest.raises(ValueError, match="f32"):
        build_index(np.ones((6, 4), dtype=np.float32), vectors="f64")  # type: ignore[arg-type]
