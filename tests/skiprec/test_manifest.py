"""skiprec.manifest: the retrieval spec's search depths."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from skiprec.manifest import (
    CANDIDATES_INPUT_NAMES,
    CANDIDATES_OUTPUT_NAMES,
    QUERY_INPUT_NAMES,
    QUERY_OUTPUT_NAMES,
    RetrievalSpec,
)


def _tensors(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"name": name, "dtype": "int64", "shape": ["batch_size"]} for name in names]


def _spec(*depths: tuple[int, int, int]) -> RetrievalSpec:
    return RetrievalSpec.model_validate(
        {
            "library": "usearch",
            "library_version": "2",
            "metric": "ip",
            "connectivity": 16,
            "expansion_add": 200,
            "expansion_search": 256,
            "num_candidates": 200,
            "min_tracks": 0,
            "query_inputs": _tensors(QUERY_INPUT_NAMES),
            "query_outputs": _tensors(QUERY_OUTPUT_NAMES),
            "candidates_inputs": _tensors(CANDIDATES_INPUT_NAMES),
            "candidates_outputs": _tensors(CANDIDATES_OUTPUT_NAMES),
            "recall": {"num_sessions": 1, "recall_at_10": 1.0, "recall_at_100": 1.0},
            "depths": [
                {
                    "max_width": width,
                    "num_candidates": hits,
                    "expansion_search": expansion,
                    "recall": 0.999,
                }
                for width, hits, expansion in depths
            ],
        }
    )


def test_a_batch_searches_at_the_narrowest_depth_that_holds_its_width() -> None:
    spec = _spec((10, 50, 64), (40, 100, 128))
    assert spec.depth(1) == (50, 64)
    assert spec.depth(10) == (50, 64)
    assert spec.depth(11) == (100, 128)
    assert spec.depth(40) == (100, 128)
    assert spec.depth(41) == (200, 256)  # past every depth: the full one
    assert spec.depth(None) == (200, 256)


def test_a_manifest_without_depths_searches_every_batch_at_the_full_depth() -> None:
    spec = _spec()
    assert spec.depths == ()
    assert spec.depth(1) == (200, 256)


@pytest.mark.parametrize(
    ("depths", "message"),
    [
        (((40, 100, 128), (10, 50, 64)), "widen strictly"),
        (((10, 50, 64), (10, 100, 128)), "widen strictly"),
        (((10, 300, 64),), "more than the full depth's 200"),
    ],
)
def test_depths_must_widen_and_search_no_more_than_the_full_depth(
    depths: tuple[tuple[int, int, int], ...], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _spec(*depths)


def test_the_served_recall_at_10_is_that_of_the_depth_k_10_searches_at() -> None:
    assert _spec((10, 50, 64)).served_recall_at_10() == 0.999
    assert _spec().served_recall_at_10() == 1.0  # the full depth's
    # a depth measured at another width says nothing of recall@10
    assert _spec((40, 100, 128)).served_recall_at_10() is None
