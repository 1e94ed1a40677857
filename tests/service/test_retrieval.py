"""The two-stage path: a bundle with an ANN index ranks as exact scoring does, batches
from the measured crossover score the whole catalogue, and a tampered index is
refused by its hash."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.inference import NEVER, InferenceRequest, LoadedModel, crossover_batch
from skiprec.bundle import BundleHashMismatch, load_bundle, open_inference_session
from skiprec.manifest import INDEX_FILE, MANIFEST_FILE, VectorDtype
from tests.conftest import TINY_NUM_TRACKS, TINY_TOP_K


def _export(make_run, out_dir: Path, vectors: VectorDtype) -> Path:
    from model_export.export import export_bundle

    export_bundle(
        make_run(skip_head=True, skip_weight=0.5),
        out_dir,
        top_k=TINY_TOP_K,
        ann_min_tracks=0,
        ann_candidates=TINY_NUM_TRACKS,  # generous: every track
        ann_vectors=vectors,
    )
    return out_dir


@pytest.fixture(scope="module")
def retrieval_bundle(make_run, tmp_path_factory) -> Path:
    return _export(make_run, tmp_path_factory.mktemp("retrieval") / "bundle", "f16")


@pytest.fixture(scope="module")
def retrieval_bundle_i8(make_run, tmp_path_factory) -> Path:
    return _export(make_run, tmp_path_factory.mktemp("retrieval") / "i8", "i8")


def _requests(model: LoadedModel, count: int) -> list[InferenceRequest]:
    rng = np.random.default_rng(0)
    tracks = model.vocab.track_ids
    requests = []
    for i in range(count):
        length = int(rng.integers(1, 12))
        picked = tuple(tracks[j] for j in rng.integers(0, len(tracks), size=length))
        skipped = tuple(bool(s) for s in rng.random(length) < 0.4)
        excluded = tuple(t for t, s in zip(picked, skipped, strict=True) if s)
        penalties = ((picked[0], 0.7),) if i % 3 == 0 else ()
        candidates = tuple(dict.fromkeys(tracks[:9])) if i % 4 == 0 else ()
        k = len(candidates) if candidates else int(rng.integers(1, TINY_TOP_K + 1))
        requests.append(
            InferenceRequest(
                picked, skipped, k, excluded, penalties, candidates=candidates
            )
        )
    return requests


@pytest.mark.parametrize("fixture", ["retrieval_bundle", "retrieval_bundle_i8"])
def test_two_stage_top_k_equals_exact_top_k(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(fixture)
    two_stage = LoadedModel.load(path, onnx_threads=1)
    assert two_stage.retrieval is not None
    bundle = load_bundle(path)
    exact = LoadedModel(bundle, open_inference_session(bundle))  # no retrieval
    requests = _requests(exact, 60)
    for got, want in zip(two_stage.infer(requests), exact.infer(requests), strict=True):
        assert [t.track_id for t in got] == [t.track_id for t in want]
        assert [t.score for t in got] == pytest.approx(
            [t.score for t in want], abs=1e-4
        )
        assert [t.p_skip for t in got] == pytest.approx(
            [t.p_skip for t in want], abs=1e-4
        )


def test_a_tampered_index_is_refused_by_its_hash(
    retrieval_bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(retrieval_bundle, copy)
    data = bytearray((copy / INDEX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleHashMismatch, match=INDEX_FILE):
        LoadedModel.load(copy, onnx_threads=1)


def test_a_manifest_that_drops_the_index_from_its_files_is_refused(
    retrieval_bundle: Path, tmp_path: Path
) -> None:
    from skiprec.bundle import BundleManifestInvalid

    copy = tmp_path / "bundle"
    shutil.copytree(retrieval_bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    del manifest["files"][INDEX_FILE]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleManifestInvalid, match=INDEX_FILE):
        load_bundle(copy)


async def test_the_exact_setting_scores_the_whole_catalogue(
    retrieval_bundle: Path, make_settings
) -> None:
    from tests.service.conftest import serving

    for setting, two_stage in (("auto", True), ("exact", False)):
        settings = make_settings(bundle_dir=retrieval_bundle, retrieval=setting)
        async with serving(settings) as (state, client):
            assert (state.models.current.retrieval is not None) is two_stage
            answer = await client.get("/recommendations/nobody")
            assert answer.status_code == 200


def test_the_crossover_is_where_the_whole_catalogue_call_costs_no_more() -> None:
    # exact: 2.25 ms + 0.65 ms a session; two stages: 1.7 ms a session, no fixed
    # part: equal at 2.25 / 1.05 = 2.14 sessions, so from 3 on.
    assert crossover_batch((1, 8), (2.9e-3, 7.45e-3), (1.7e-3, 13.6e-3)) == 3
    # the whole-catalogue call is cheaper even alone: from 1
    assert crossover_batch((1, 8), (1.0e-3, 2.4e-3), (1.5e-3, 12.0e-3)) == 1
    # the two stages grow more slowly per session: never
    assert crossover_batch((1, 8), (2.9e-3, 20.0e-3), (1.7e-3, 9.0e-3)) == NEVER


def test_batches_from_exact_from_score_the_whole_catalogue(
    retrieval_bundle: Path, monkeypatch
) -> None:
    model = LoadedModel.load(retrieval_bundle, onnx_threads=1, exact_from=3)
    assert model.exact_from == 3
    bundle = load_bundle(retrieval_bundle)
    exact = LoadedModel(bundle, open_inference_session(bundle))
    two_stage_batches: list[int] = []
    real = model._two_stage

    def counted(requests, *args):
        two_stage_batches.append(len(requests))
        return real(requests, *args)

    monkeypatch.setattr(model, "_two_stage", counted)
    requests = _requests(exact, 8)
    for size in (1, 2, 3, 8):
        batch = requests[:size]
        for got, want in zip(model.infer(batch), exact.infer(batch), strict=True):
            assert [t.track_id for t in got] == [t.track_id for t in want]
    assert two_stage_batches == [1, 2]


def test_a_model_that_never_scores_the_whole_catalogue_lets_its_graph_go(
    retrieval_bundle: Path,
) -> None:
    # Smoke-tested and timed first; then only the two stages ever run.
    model = LoadedModel.load(retrieval_bundle, onnx_threads=1, exact_from=NEVER)
    assert model.session is None
    bundle = load_bundle(retrieval_bundle)
    exact = LoadedModel(bundle, open_inference_session(bundle))
    batch = _requests(exact, 8)
    for got, want in zip(model.infer(batch), exact.infer(batch), strict=True):
        assert [t.track_id for t in got] == [t.track_id for t in want]
    kept = LoadedModel.load(retrieval_bundle, onnx_threads=1, exact_from=8)
    assert kept.session is not None


def test_the_crossover_is_measured_at_load_unless_set(
    retrieval_bundle: Path,
) -> None:
    measured = LoadedModel.load(retrieval_bundle, onnx_threads=1)
    assert 1 <= measured.exact_from <= NEVER
    exact_only = LoadedModel.load(retrieval_bundle, onnx_threads=1, two_stage=False)
    assert exact_only.retrieval is None


async def test_the_exact_min_batch_setting_replaces_the_measurement(
    retrieval_bundle: Path, make_settings
) -> None:
    from tests.service.conftest import serving

    settings = make_settings(bundle_dir=retrieval_bundle, exact_min_batch=5)
    async with serving(settings) as (state, client):
        assert state.models.current.exact_from == 5
        assert (await client.get("/recommendations/nobody")).status_code == 200


def test_the_search_depth_follows_the_widest_request_of_the_batch(
    retrieval_bundle: Path,
) -> None:
    model = LoadedModel.load(retrieval_bundle, onnx_threads=1, exact_from=NEVER)
    assert model.retrieval is not None
    spec = model.retrieval.spec
    (depth,) = spec.depths  # the export kept one for the default k
    assert depth.max_width == 10

    def searched_at(*requests: InferenceRequest) -> int:
        model.infer(list(requests))
        assert model.retrieval is not None
        return int(model.retrieval.index.expansion_search)

    tracks = model.vocab.track_ids
    window = tuple(tracks[:5])
    plain = InferenceRequest(window, (False,) * 5, 10)
    assert searched_at(plain) == depth.expansion_search
    assert searched_at(plain, replace(plain, k=11)) == spec.expansion_search
    # A penalised window track is a candidate whatever the search finds; one from
    # earlier in the session may have to be replaced by the next hit.
    inside = replace(plain, penalties=((window[0], 0.7),))
    assert searched_at(inside) == depth.expansion_search
    outside = replace(plain, penalties=((tracks[30], 0.7),))
    assert searched_at(outside) == spec.expansion_search
    # Client candidates are ranked without the search's hits, whatever their number.
    given = InferenceRequest(window, (False,) * 5, 30, candidates=tuple(tracks[:30]))
    assert searched_at(given, plain) == depth.expansion_search
