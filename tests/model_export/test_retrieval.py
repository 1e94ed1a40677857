"""model_export.retrieval: the two-stage files are exported, checked and refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_export.export import export_bundle
from model_export.parity import parity_batches, synthetic_sessions
from model_export.retrieval import (
    DEPTH_RECALL_LOSS,
    ParityRecallError,
    check_candidates,
    choose_depths,
    measure_recall,
    recall_at,
)
from skiprec.bundle import (
    BundleSignatureMismatch,
    load_bundle,
    open_inference_session,
    open_retrieval,
)
from skiprec.manifest import MANIFEST_FILE, RETRIEVAL_FILES, VectorDtype
from tests.conftest import TINY_NUM_TRACKS, TINY_TOP_K

INF = float("inf")


@pytest.fixture(scope="module")
def retrieval_export(make_run, tmp_path_factory):
    """A skip-ranked tiny run exported with the two-stage files, every track a
    possible candidate."""
    run_dir = make_run(skip_head=True, skip_weight=0.5)
    out_dir = tmp_path_factory.mktemp("retrieval") / "bundle"
    manifest = export_bundle(
        run_dir,
        out_dir,
        top_k=TINY_TOP_K,
        ann_min_tracks=0,
        ann_candidates=TINY_NUM_TRACKS,
    )
    return run_dir, out_dir, manifest


def test_export_writes_lists_and_checks_the_retrieval_files(retrieval_export):
    _, out_dir, manifest = retrieval_export
    assert manifest.retrieval is not None
    for name in RETRIEVAL_FILES:
        assert (out_dir / name).is_file()
        assert name in manifest.files
    # All tracks are candidates: the two-stage top-k is the full graph's.
    assert manifest.retrieval.recall.recall_at_10 == 1.0
    assert manifest.retrieval.recall.recall_at_100 == 1.0
    assert manifest.retrieval.recall.num_sessions >= 1000
    assert manifest.retrieval.min_tracks == 0
    assert manifest.retrieval.vectors == "f16"  # the default
    retrieval = open_retrieval(load_bundle(out_dir))
    assert retrieval is not None
    assert retrieval.index.dtype.name == "F16"


@pytest.mark.parametrize("vectors", ["f32", "i8"])
def test_an_index_of_each_precision_is_exported_recorded_and_checked(
    retrieval_export, tmp_path: Path, vectors: VectorDtype
) -> None:
    run_dir, _, _ = retrieval_export
    manifest = export_bundle(
        run_dir,
        tmp_path / "bundle",
        top_k=TINY_TOP_K,
        ann_min_tracks=0,
        ann_candidates=TINY_NUM_TRACKS,
        ann_vectors=vectors,
    )
    assert manifest.retrieval is not None
    assert manifest.retrieval.vectors == vectors
    # every track a candidate and each one scored exactly: the precision of the
    # search cannot change the top-k
    assert manifest.retrieval.recall.recall_at_10 == 1.0
    dimensions = manifest.retrieval.query_outputs[0].shape[-1]
    assert len(manifest.retrieval.scales) == (dimensions if vectors == "i8" else 0)
    retrieval = open_retrieval(load_bundle(tmp_path / "bundle"))
    assert retrieval is not None
    assert retrieval.index.dtype.name == vectors.upper()
    if vectors == "i8":
        # scales for another width of query than the index's are refused
        path = tmp_path / "bundle" / MANIFEST_FILE
        raw = json.loads(path.read_text())
        raw["retrieval"]["scales"] = raw["retrieval"]["scales"][1:]
        path.write_text(json.dumps(raw))
        with pytest.raises(BundleSignatureMismatch, match="scales for an index"):
            open_retrieval(load_bundle(tmp_path / "bundle"))


def test_a_manifest_from_before_there_was_a_choice_of_precision_is_f32(
    retrieval_export, tmp_path: Path
) -> None:
    run_dir, _, _ = retrieval_export
    export_bundle(
        run_dir,
        tmp_path / "bundle",
        top_k=TINY_TOP_K,
        ann_min_tracks=0,
        ann_candidates=TINY_NUM_TRACKS,
        ann_vectors="f32",
    )
    path = tmp_path / "bundle" / MANIFEST_FILE
    raw = json.loads(path.read_text())
    del raw["retrieval"]["vectors"]
    path.write_text(json.dumps(raw))
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest.retrieval is not None
    assert bundle.manifest.retrieval.vectors == "f32"
    assert open_retrieval(bundle) is not None


def test_an_index_of_another_precision_than_its_manifest_is_refused(
    retrieval_export, tmp_path: Path
) -> None:
    _, out_dir, _ = retrieval_export
    copy = tmp_path / "bundle"
    shutil.copytree(out_dir, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    assert manifest["retrieval"]["vectors"] == "f16"
    manifest["retrieval"]["vectors"] = "f32"
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleSignatureMismatch, match="f16 vectors"):
        open_retrieval(load_bundle(copy))


def test_small_catalogue_gets_no_retrieval_files(tiny_bundle_dir: Path) -> None:
    bundle = load_bundle(tiny_bundle_dir)
    assert bundle.manifest.retrieval is None
    assert not any((tiny_bundle_dir / name).exists() for name in RETRIEVAL_FILES)
    assert open_retrieval(bundle) is None


def test_export_refuses_a_two_stage_path_below_the_recall_floor(
    retrieval_export, tmp_path: Path
) -> None:
    run_dir, _, _ = retrieval_export
    out_dir = tmp_path / "bundle"
    # One ANN hit per session cannot hold 95% of a skip-reordered top-10.
    with pytest.raises(ParityRecallError, match="recall@10"):
        export_bundle(
            run_dir,
            out_dir,
            top_k=TINY_TOP_K,
            ann_min_tracks=0,
            ann_candidates=1,
            ann_required=True,
        )
    assert not out_dir.exists()
    assert not list(tmp_path.iterdir())


def test_a_recall_miss_not_asked_for_ships_whole_catalogue_scoring(
    retrieval_export, tmp_path: Path
) -> None:
    run_dir, _, _ = retrieval_export
    out_dir = tmp_path / "bundle"
    manifest = export_bundle(
        run_dir, out_dir, top_k=TINY_TOP_K, ann_min_tracks=0, ann_candidates=1
    )
    assert manifest.retrieval is None
    assert "recall@10" in manifest.metrics["retrieval_refused"]
    assert not any((out_dir / name).exists() for name in RETRIEVAL_FILES)
    assert open_retrieval(load_bundle(out_dir)) is None


def test_recall_at_counts_the_exact_top_k_found_ties_and_short_rows_included() -> None:
    exact = np.array(
        [
            [5.0, 4.0, 3.0, 2.0],
            [9.0, 9.0, 1.0, -INF],  # a tie at the top; three rankable tracks
        ],
        dtype=np.float32,
    )
    found = np.array(
        [
            [5.0, 3.0, 2.0, 1.0],  # 4.0 missed
            [9.0, 1.0, -INF, -INF],  # one of the tied pair missed
        ],
        dtype=np.float32,
    )
    counts = recall_at(exact, found, [1, 2, 4])
    # k=1: 5 >= 5 and 9 >= 9; k=2: {5, 3} >= 4 holds one, {9, 1} >= 9 one;
    # k=4: row 0 {5, 3, 2, 1} >= 2 holds three; row 1 has three to find, holds two.
    assert counts == {1: (2, 2), 2: (2, 4), 4: (5, 7)}


def _checked(out_dir: Path):
    bundle = load_bundle(out_dir)
    retrieval = open_retrieval(bundle)
    assert retrieval is not None
    spec = bundle.manifest.encoding_spec()
    sessions = synthetic_sessions(
        bundle.vocab.size, spec.max_seq_len, 300, graded=spec.graded
    )
    batches = parity_batches(sessions, spec, bundle.vocab.size)
    exact = check_candidates(open_inference_session(bundle), retrieval, batches)
    return retrieval, batches, exact


def test_the_export_keeps_a_shallower_search_that_holds_the_recall(
    retrieval_export,
) -> None:
    _, out_dir, manifest = retrieval_export
    assert manifest.retrieval is not None
    (depth,) = manifest.retrieval.depths
    assert depth.max_width == 10
    assert depth.num_candidates < manifest.retrieval.num_candidates
    assert depth.expansion_search < manifest.retrieval.expansion_search
    # Measured again on other sessions: the shallow search ranks as well at k=10,
    # and the index is left at the depth of the last search.
    retrieval, batches, exact = _checked(out_dir)
    full = measure_recall(retrieval, batches, exact, [10])[10]
    shallow = measure_recall(retrieval, batches, exact, [10], 10)[10]
    assert shallow >= full - 2 * DEPTH_RECALL_LOSS
    assert retrieval.index.expansion_search == depth.expansion_search
    measure_recall(retrieval, batches, exact, [10], 11)
    assert retrieval.index.expansion_search == manifest.retrieval.expansion_search


def test_a_shallower_search_that_loses_recall_is_not_kept(retrieval_export) -> None:
    _, out_dir, _ = retrieval_export
    retrieval, batches, exact = _checked(out_dir)
    # One hit cannot hold a top-10; the next step of the ladder is tried.
    (depth,) = choose_depths(retrieval, batches, exact, ((10, 1, 1), (10, 50, 64)))
    assert (depth.max_width, depth.num_candidates, depth.expansion_search) == (
        10,
        50,
        64,
    )
    assert choose_depths(retrieval, batches, exact, ((10, 1, 1),)) == ()
    # a step no shallower than the full depth is no depth
    spec = retrieval.spec
    full = ((10, spec.num_candidates, spec.expansion_search),)
    assert choose_depths(retrieval, batches, exact, full) == ()
