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
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    MANIFEST_FILE,
    MODEL_FILE,
    POPULARITY_FILE,
    SCHEMA_VERSION,
    VOCAB_FILE,
)
from skiprec.vocab import NUM_SPECIAL, OOV_ID
from training.checkpoint import load_run
from training.data import Session, write_event_log


def _onnx_vs_torch(bundle_dir: Path, run_dir: Path) -> None:
    """Run a mixed batch through the served graph and the torch wrapper."""
    bundle = load_bundle(bundle_dir)
    session = open_inference_session(bundle)
    module = ServingModule(load_run(run_dir).model, bundle.manifest.top_k)
    spec = bundle.manifest.encoding_spec()
    sessions = [
        [(5, 1), (9, 2), (12, 1)],
        [(OOV_ID, 1)],
        [(NUM_SPECIAL + i, 1 + i % 2) for i in range(spec.max_seq_len + 4)],
    ]
    item_ids, feedback = encode_sessions(sessions, spec)
    exclude_ids = encode_exclusions([[9], [], [NUM_SPECIAL, NUM_SPECIAL + 1]])
    top_indices, top_scores = session.run(
        None,
        {
            INPUT_ITEM_IDS: item_ids,
            INPUT_FEEDBACK: feedback,
            INPUT_EXCLUDE: exclude_ids,
        },
    )
    with torch.inference_mode():
        torch_indices, torch_scores = module(
            *map(torch.from_numpy, (item_ids, feedback, exclude_ids))
        )
    # Rows with fewer than K rankable tracks end in -inf: "no track", in any order.
    ranked = np.isfinite(top_scores)
    np.testing.assert_array_equal(ranked, np.isfinite(torch_scores.numpy()))
    np.testing.assert_array_equal(top_indices[ranked], torch_indices.numpy()[ranked])
    np.testing.assert_allclose(top_scores, torch_scores.numpy(), atol=PARITY_ATOL)
    assert (top_indices[ranked] >= NUM_SPECIAL).all()
    assert 9 not in top_indices[0]
    assert not {NUM_SPECIAL, NUM_SPECIAL + 1} & set(top_indices[2].tolist())


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
    ]
    assert [spec.shape for spec in manifest.outputs] == [["batch_size", 20]] * 2
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
    _onnx_vs_torch(tiny_bundle_dir, tiny_run_dir)


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
    indices, scores = session.run(
        None,
        {
            INPUT_ITEM_IDS: item_ids,
            INPUT_FEEDBACK: feedback,
            INPUT_EXCLUDE: encode_exclusions([[9]]),
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
