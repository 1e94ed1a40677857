"""skiprec.manifest: the retrieval spec's search depths and i8 scales."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.conftest import retrieval_spec


def test_a_batch_searches_at_the_narrowest_depth_that_holds_its_width() -> None:
    spec = retrieval_spec((10, 50, 64), (40, 100, 128))
    assert spec.depth(1) == (50, 64)
    assert spec.depth(10) == (50, 64)
    assert spec.depth(11) == (100, 128)
    assert spec.depth(40) == (100, 128)
    assert spec.depth(41) == (200, 256)  # past every depth: the full one
    assert spec.depth(None) == (200, 256)


def test_a_manifest_without_depths_searches_every_batch_at_the_full_depth() -> None:
    spec = retrieval_spec()
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
        retrieval_spec(*depths)


def test_the_served_recall_at_10_is_that_of_the_depth_k_10_searches_at() -> None:
    assert retrieval_spec((10, 50, 64)).served_recall_at_10() == 0.999
    assert retrieval_spec().served_recall_at_10() == 1.0  # the full depth's
    # a depth measured at another width says nothing of recall@10
    assert retrieval_spec((40, 100, 128)).served_recall_at_10() is None


def test_an_i8_index_has_its_scales_and_no_other_index_has_any() -> None:
    assert retrieval_spec(vectors="i8", scales=[0.5, 2.0]).scales == (0.5, 2.0)
    assert retrieval_spec(vectors="f16").scales == ()
    with pytest.raises(ValidationError, match="an i8 index needs them"):
        retrieval_spec(vectors="i8")
    with pytest.raises(ValidationError, match="scales belong to an i8 index"):
        retrieval_spec(vectors="f16", scales=[1.0])
