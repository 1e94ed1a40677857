"""Export round trip: a tiny run -> bundle -> service loader -> same top-k as torch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model_export import export as export_module
from model_export.export import export_bundle, main, sessions_from_data
from model_export.parity import (
    MIN_PARITY_SESSIONS,
    PARITY_ATOL,
    ParityValueError,
)
from model_export.wrapper import ServingModule
from skiprec.bundle import load_bundle, open_inference_session, sha256_file
from skiprec.encoding import encode_exclusions, encode_sessions
from skiprec.manifest import (
    INPUT_CANDIDATES,
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_CANDIDATE_P_SKIP,
    OUTPUT_CANDIDATE_SCORES,
    OUTPUT_INDICES,
    OUTPUT_NAMES,
    OUTPUT_P_SKIP,
    OUTPUT_SCORES,
    POPULARITY_FILE,
    SCHEMA_VERSION,
    VOCAB_FILE,
)
from skiprec.vocab import NUM_SPECIAL, OOV_ID
from training.checkpoint import load_run
from training.data import Session, write_event_log
from training.scoring import TorchScorer

# Candidates per row: PAD fill, an excluded track (9), OOV, real tracks.
CANDIDATES = [[9, 12, 5, 0], [OOV_ID, 7, 0, 0], [NUM_SPECIAL, 20, 21, 22]]


def _feeds(spec) -> dict[str, np.ndarray]:
    sessions = [
        [(5, 1), (9, 2), (12, 1)],
        [(OOV_ID, 1)],
        [(NUM_SPECIAL + i, 1 + i % 2) for i in range(spec.max_seq_len + 4)],
    ]
    item_ids, feedback = encode_sessions(sessions, spec)
    return {
        INPUT_ITEM_IDS: item_ids,
        INPUT_FEEDBACK: feedback,
        INPUT_EXCLUDE: encode_exclusions([[9], [], [NUM_SPECIAL, NUM_SPECIAL + 1]]),
        INPUT_CANDIDATES: np.array(CANDIDATES, dtype=np.int64),
    }


def _onnx_vs_torch(bundle_dir: Path, run_dir: Path) -> dict[str, np.ndarray]:
    """Run a mixed batch through the served graph and the torch wrapper; returns
    the graph's outputs by name."""
    bundle = load_bundle(bundle_dir)
    session = open_inference_session(bundle)
    module = ServingModule(load_run(run_dir).model, bundle.manifest.top_k)
    feeds = _feeds(bundle.manifest.encoding_spec())
    outputs = dict(zip(OUTPUT_NAMES, session.run(None, feeds), strict=True))
    with torch.inference_mode():
        expected = dict(
            zip(
                OUTPUT_NAMES,
                (t.numpy() for t in module(*map(torch.from_numpy, feeds.values()))),
                strict=True,
            )
        )
    top_indices, top_scores = outputs[OUTPUT_INDICES], outputs[OUTPUT_SCORES]
    # Rows with fewer than K rankable tracks end in -inf: "no track", in any order.
    ranked = np.isfinite(top_scores)
    np.testing.assert_array_equal(ranked, np.isfinite(expected[OUTPUT_SCORES]))
    np.testing.assert_array_equal(top_indices[ranked], expected[OUTPUT_INDICES][ranked])
    for name in (OUTPUT_SCORES, OUTPUT_CANDIDATE_SCORES):
        np.testing.assert_allclose(outputs[name], expected[name], atol=PARITY_ATOL)
    for name in (OUTPUT_P_SKIP, OUTPUT_CANDIDATE_P_SKIP):  # NaN = NaN here
        np.testing.assert_allclose(outputs[name], expected[name], atol=PARITY_ATOL)
    assert (top_indices[ranked] >= NUM_SPECIAL).all()
    assert 9 not in top_indices[0]
    assert not {NUM_SPECIAL, NUM_SPECIAL + 1} & set(top_indices[2].tolist())
    # Candidates: PAD, OOV and excluded ids score -inf, the others as in the top-K.
    candidate_scores = outputs[OUTPUT_CANDIDATE_SCORES]
    assert np.isneginf(candidate_scores[0, [0, 3]]).all()  # excluded 9, PAD
    assert np.isneginf(candidate_scores[1, [0, 2, 3]]).all()  # OOV, PAD, PAD
    assert np.isneginf(candidate_scores[2, 0])  # excluded in row 2
    for row, items in enumerate(CANDIDATES):
        for column, item in enumerate(items):
            where = np.flatnonzero(top_indices[row] == item)
            if where.size and np.isfinite(top_scores[row, where[0]]):
                assert candidate_scores[row, column] == pytest.approx(
                    top_scores[row, where[0]], abs=PARITY_ATOL
                )
    return outputs


def test_export_round_trips_sasrec(tiny_run_dir: Path, tiny_bundle_dir: Path) -> None:
    run = load_run(tiny_run_dir)
    bundle = load_bundle(tiny_bundle_dir)
    manifest = bundle.manifest
    assert sorted(p.name for p in tiny_bundle_dir.iterdir()) == sorted(
        [MANIFEST_FILE, MODEL_FILE, VOCAB_FILE, POPULARITY_FILE]
    )
    assert manifest.schema_version == SCHEMA_VERSION
    assert re.fullmatch(r"sasrec-\d{14}-[0-9a-f]{8}", manifest.model_version)
    assert manifest.model_version.endswith(sha256_file(bundle.model_path)[:8])
    assert manifest.backbone == "sasrec" and not manifest.append_mask
    assert manifest.model_config_ == run.model.config.to_dict()
    assert manifest.train_config == run.train_config
    assert manifest.metrics == run.metrics
    assert manifest.data_fingerprint == run.data_fingerprint
    assert (manifest.num_items, manifest.top_k, manifest.max_seq_len) == (60, 20, 8)
    assert manifest.opset >= 17
    assert [spec.name for spec in manifest.inputs] == [
        "item_ids",
        "feedback",
        "exclude_ids",
        "candidate_ids",
    ]
    assert [spec.name for spec in manifest.outputs] == [
        "top_indices",
        "top_scores",
        "top_p_skip",
        "candidate_scores",
        "candidate_p_skip",
    ]
    assert [spec.shape for spec in manifest.outputs] == [["batch_size", 20]] * 3 + [
        ["batch_size", "num_candidates"]
    ] * 2
    assert (manifest.skip_head, manifest.skip_weight) == (False, 0.0)
    assert manifest.files == {
        name: sha256_file(tiny_bundle_dir / name)
        for name in (MODEL_FILE, VOCAB_FILE, POPULARITY_FILE)
    }
    assert manifest.parity.atol == PARITY_ATOL
    assert manifest.parity.num_sessions >= MIN_PARITY_SESSIONS
    assert manifest.parity.max_abs_diff <= PARITY_ATOL
    assert manifest.parity.top10_agreement >= 0.999
    assert bundle.vocab == run.vocab
    assert bundle.popularity == run.popularity
    outputs = _onnx_vs_torch(tiny_bundle_dir, tiny_run_dir)
    # Without a skip head every p_skip is NaN.
    assert np.isnan(outputs[OUTPUT_P_SKIP]).all()
    assert np.isnan(outputs[OUTPUT_CANDIDATE_P_SKIP]).all()


@pytest.mark.parametrize("skip_weight", [0.0, 0.5])
def test_export_with_a_skip_head(make_run, make_bundle, skip_weight) -> None:
    overrides = {"skip_head": True, "graded_feedback": True, "skip_weight": skip_weight}
    bundle_dir = make_bundle(**overrides)
    manifest = load_bundle(bundle_dir).manifest
    assert (manifest.skip_head, manifest.skip_weight) == (True, skip_weight)
    assert manifest.encoding_spec().graded
    assert manifest.parity.max_abs_diff <= PARITY_ATOL
    run = make_run(**overrides)
    outputs = _onnx_vs_torch(bundle_dir, run)
    top_p, top_scores = outputs[OUTPUT_P_SKIP], outputs[OUTPUT_SCORES]
    ranked = np.isfinite(top_scores)
    assert ((0 < top_p[ranked]) & (top_p[ranked] < 1)).all()
    assert np.isnan(top_p[~ranked]).all()
    candidate_p = outputs[OUTPUT_CANDIDATE_P_SKIP]
    specials = np.array(CANDIDATES) < NUM_SPECIAL
    assert np.isnan(candidate_p[specials]).all()
    assert ((0 < candidate_p[~specials]) & (candidate_p[~specials] < 1)).all()
    # p_skip is the offline scorer's, and the graph's ranking is TorchScorer's.
    model = load_run(run).model
    feeds = _feeds(manifest.encoding_spec())
    histories = [
        [(int(i), int(c)) for i, c in zip(items, codes, strict=True) if i]
        for items, codes in zip(
            feeds[INPUT_ITEM_IDS], feeds[INPUT_FEEDBACK], strict=True
        )
    ]
    scorer = TorchScorer(model)
    for column in range(len(CANDIDATES[0])):
        targets = np.array([row[column] for row in CANDIDATES])
        real = targets >= NUM_SPECIAL
        np.testing.assert_allclose(
            scorer.p_skip(histories, targets)[real],
            candidate_p[real, column],
            atol=PARITY_ATOL,
        )
    offline = scorer.score(histories)
    first = outputs[OUTPUT_INDICES][1, 0]  # row 1 excludes nothing
    assert first == int(np.argmax(offline[1]))
    # beta != 0 scores p_skip of every track before TopK: a second table MatMul.
    nodes = onnx.load(str(load_bundle(bundle_dir).model_path)).graph.node
    table_reads = [
        n for n in nodes if n.op_type == "MatMul" and "item_table_t" in n.input
    ]
    assert len(table_reads) == (2 if skip_weight else 1)


def test_export_round_trips_bert4rec_and_caps_top_k(make_run, make_bundle) -> None:
    bundle_dir = make_bundle(backbone="bert4rec", top_k=500)
    manifest = load_bundle(bundle_dir).manifest
    assert manifest.backbone == "bert4rec" and manifest.append_mask
    assert manifest.top_k == 57  # min(500, number of real tracks)
    assert manifest.parity.max_abs_diff <= PARITY_ATOL
    # Same seed and overrides as the factory's run: the same weights.
    _onnx_vs_torch(bundle_dir, make_run(backbone="bert4rec"))


def test_export_int8_records_drift_and_serves(make_bundle) -> None:
    bundle_dir = make_bundle(precision="int8")
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.precision == "int8"
    drift = bundle.manifest.metrics["int8_drift"]
    assert drift["num_sessions"] >= MIN_PARITY_SESSIONS
    assert drift["top10_overlap"] >= 0.9
    assert bundle.manifest.parity.max_abs_diff <= PARITY_ATOL  # the fp32 graph's
    ops = {node.op_type for node in onnx.load(str(bundle.model_path)).graph.node}
    assert "MatMulInteger" in ops
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(
        [MANIFEST_FILE, MODEL_FILE, VOCAB_FILE, POPULARITY_FILE]
    )
    session = open_inference_session(bundle)
    spec = bundle.manifest.encoding_spec()
    item_ids, feedback = encode_sessions([[(5, 1), (9, 2)]], spec)
    indices, scores, *_ = session.run(
        None,
        {
            INPUT_ITEM_IDS: item_ids,
            INPUT_FEEDBACK: feedback,
            INPUT_EXCLUDE: encode_exclusions([[9]]),
            INPUT_CANDIDATES: np.zeros((1, 1), dtype=np.int64),
        },
    )
    assert indices.shape == (1, 20) and scores.dtype == np.float32
    assert 9 not in indices[0] and (indices >= NUM_SPECIAL).all()


def test_export_parity_failure_writes_nothing(tiny_run_dir, tmp_path, monkeypatch):
    def fake_export(module, path):
        path.write_bytes(b"graph")

    def fail_parity(*args, **kwargs):
        raise ParityValueError("forced", ["session 0, position 0: forced mismatch"])

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    monkeypatch.setattr(export_module, "check_parity", fail_parity)
    out_dir = tmp_path / "bundles" / "v1"
    with pytest.raises(ParityValueError, match="forced mismatch"):
        export_bundle(tiny_run_dir, out_dir, top_k=5)
    assert list((tmp_path / "bundles").iterdir()) == []


def test_export_refuses_nonempty_out_dir(tiny_run_dir, tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("not a bundle")
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(tiny_run_dir, tmp_path, top_k=5)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_export_cli_force_replaces_directory(tiny_run_dir, tmp_path) -> None:
    out_dir = tmp_path / "bundle"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("old")
    argv = ["--run", str(tiny_run_dir), "--out", str(out_dir), "--top-k", "5"]
    assert main(argv) == 1
    assert main([*argv, "--force", "--model-version", "v-test"]) == 0
    manifest = load_bundle(out_dir).manifest
    assert (manifest.model_version, manifest.top_k) == ("v-test", 5)
    assert not (out_dir / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_sessions_from_data_encodes_with_vocab(tiny_run_dir, tmp_path) -> None:
    vocab = load_run(tiny_run_dir).vocab
    sessions = [
        Session("u1#0", ("t0", "t5", "unknown"), (False, True, False)),
        Session("u2#0", ("t3",), (True,)),
    ]
    path = tmp_path / "events.csv"
    write_event_log(sessions, path)
    encoded = sessions_from_data(path, vocab, num_sessions=10)
    assert sorted(encoded) == sorted([[(3, 1), (8, 2), (OOV_ID, 1)], [(6, 2)]])


def test_manifest_json_uses_contract_field_names(tiny_bundle_dir: Path) -> None:
    payload = json.loads((tiny_bundle_dir / MANIFEST_FILE).read_text())
    assert "model_config" in payload and "model_config_" not in payload
    assert payload["special_ids"] == {"pad": 0, "oov": 1, "mask": 2}
    assert payload["feedback_codes"] == {"pad": 0, "play": 1, "skip": 2, "mask": 3}


def test_the_manifest_carries_the_policy_the_run_chose(make_bundle, tiny_bundle_dir):
    from skiprec.bundle import load_bundle
    from skiprec.policy import SessionPolicy

    chosen = SessionPolicy("penalize", "none", skipped_penalty=0.5)
    manifest = load_bundle(make_bundle(policy=chosen.to_dict())).manifest
    assert manifest.policy is not None
    assert manifest.policy.session_policy() == chosen
    assert load_bundle(tiny_bundle_dir).manifest.policy is None  # none recorded
