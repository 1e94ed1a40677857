"""benchmarks.build_model's cache keys: every field that changes the bundle names it."""

from __future__ import annotations

from benchmarks.build_model import BenchModel


def test_the_index_precision_is_part_of_the_cache_key():
    f32 = BenchModel(two_stage=True, ann_vectors="f32")
    f16 = BenchModel(two_stage=True)  # the default
    # f32 keeps the name the cache had before there was a choice
    assert f32.key == "n100000-d64-L50-l2-h2-fb1-k200-s0-ann"
    assert f16.key != f32.key and f16.key.endswith("-annf16")
    assert BenchModel().key == "n100000-d64-L50-l2-h2-fb1-k200-s0"
