"""skiprec.bundle: every kind of corrupt bundle is refused with its own error."""

from __future__ import annotations

import builtins
import io
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from skiprec.bundle import (
    Bundle,
    BundleError,
    BundleFileMissing,
    BundleHashMismatch,
    BundleManifestInvalid,
    BundleSchemaVersionError,
    BundleSignatureMismatch,
    load_bundle,
    open_inference_session,
    sha256_file,
)
from skiprec.encoding import encode_exclusions, encode_sessions, feedback_code
from skiprec.manifest import (
    INPUT_CANDIDATES,
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_SCORES,
    POPULARITY_FILE,
    VOCAB_FILE,
)
from skiprec.vocab import NUM_SPECIAL

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle_copy(tiny_bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))


def _edit_manifest(bundle_dir: Path, **changes: object) -> None:
    path = bundle_dir / MANIFEST_FILE
    payload = json.loads(path.read_text())
    payload.update(changes)
    path.write_text(json.dumps(payload))


def test_load_bundle_accepts_the_exported_bundle(tiny_bundle_dir: Path) -> None:
    bundle = load_bundle(tiny_bundle_dir)
    session = open_inference_session(bundle, intra_op_threads=2, inter_op_threads=1)
    assert session.get_session_options().intra_op_num_threads == 2
    assert bundle.vocab.size == bundle.manifest.num_items
    assert bundle.popularity["t0"] == 1000


@pytest.mark.parametrize("name", [MODEL_FILE, VOCAB_FILE, POPULARITY_FILE])
def test_load_bundle_missing_file(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    with pytest.raises(BundleFileMissing, match=f"{name}: listed in manifest.json"):
        load_bundle(bundle_copy)


def _top_scores(session: Any, bundle: Bundle) -> np.ndarray:
    """The graph's top scores for one fixed two-event session."""
    spec = bundle.manifest.encoding_spec()
    events = [
        (NUM_SPECIAL, feedback_code(False)),
        (NUM_SPECIAL + 1, feedback_code(True)),
    ]
    item_ids, feedback = encode_sessions([events], spec)
    (scores,) = session.run(
        [OUTPUT_SCORES],
        {
            INPUT_ITEM_IDS: item_ids,
            INPUT_FEEDBACK: feedback,
            INPUT_EXCLUDE: encode_exclusions([[]]),
            INPUT_CANDIDATES: encode_exclusions([[]]),
        },
    )
    return np.asarray(scores)


def test_load_bundle_opens_each_file_exactly_once(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: Counter[str] = Counter()
    real_open = io.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened[Path(file).name] += 1
        return real_open(file, *args, **kwargs)

    # pathlib opens through io.open; a plain open() would go through builtins.
    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    bundle = load_bundle(bundle_copy)
    open_inference_session(bundle)
    monkeypatch.undo()
    expected = {MANIFEST_FILE, MODEL_FILE, VOCAB_FILE, POPULARITY_FILE}
    assert dict(opened) == dict.fromkeys(expected, 1)


def test_session_is_built_from_the_hashed_bytes_not_the_file(
    bundle_copy: Path, tiny_bundle_dir: Path, make_bundle: Any
) -> None:
    original = open_inference_session(load_bundle(tiny_bundle_dir))
    bundle = load_bundle(bundle_copy)
    # Another graph of the same shape takes the file's place after the hash check.
    other_dir = make_bundle(seed=1)
    shutil.copy2(other_dir / MODEL_FILE, bundle_copy / MODEL_FILE)
    other = open_inference_session(load_bundle(other_dir))
    served = _top_scores(open_inference_session(bundle), bundle)
    np.testing.assert_array_equal(served, _top_scores(original, bundle))
    assert not np.allclose(served, _top_scores(other, bundle))
    shutil.rmtree(bundle_copy)  # nothing is read from the directory any more
    assert open_inference_session(bundle).get_inputs()


def test_load_bundle_missing_manifest(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleFileMissing, match="no manifest.json; is .* a bundle"):
        load_bundle(bundle_copy)


def test_load_bundle_hash_mismatch(bundle_copy: Path) -> None:
    with (bundle_copy / POPULARITY_FILE).open("a") as f:
        f.write(" ")
    with pytest.raises(BundleHashMismatch, match="popularity.json: sha256 .* differs"):
        load_bundle(bundle_copy)


def test_load_bundle_unknown_schema_version(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, schema_version=99)
    with pytest.raises(BundleSchemaVersionError, match="'schema_version' is 99"):
        load_bundle(bundle_copy)


def test_load_bundle_refuses_a_version_1_bundle_asking_for_a_re_export(
    bundle_copy: Path,
) -> None:
    # A schema-1 manifest: three inputs, two outputs, no skip fields.
    payload = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    payload["schema_version"] = 1
    payload["inputs"] = payload["inputs"][:3]
    payload["outputs"] = payload["outputs"][:2]
    del payload["skip_head"], payload["skip_weight"]
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(payload))
    with pytest.raises(BundleSchemaVersionError) as info:
        load_bundle(bundle_copy)
    message = str(info.value)
    assert "'schema_version' is 1" in message and "'candidate_ids'" in message
    assert "re-export the run with `skiprec export --run RUN_DIR" in message


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"skip_head": False, "skip_weight": 0.5}, "no skip head"),
        ({"skip_head": True, "skip_weight": float("inf")}, "must be finite"),
    ],
)
def test_load_bundle_refuses_an_inconsistent_skip_weight(
    bundle_copy: Path, changes: dict[str, object], problem: str
) -> None:
    _edit_manifest(bundle_copy, **changes)
    with pytest.raises(BundleManifestInvalid, match=problem):
        load_bundle(bundle_copy)


def test_load_bundle_refuses_schema_2_without_the_candidate_io(
    bundle_copy: Path,
) -> None:
    payload = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    payload["outputs"] = payload["outputs"][:2]
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(payload))
    with pytest.raises(BundleManifestInvalid, match="outputs must be named"):
        load_bundle(bundle_copy)


def test_load_bundle_manifest_not_json(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_FILE).write_text('{"schema_version": 1,')
    with pytest.raises(BundleManifestInvalid, match="manifest.json: not valid JSON"):
        load_bundle(bundle_copy)


def test_load_bundle_manifest_invalid_fields(bundle_copy: Path) -> None:
    payload = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    del payload["top_k"]
    payload["num_items"] = 0
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(payload))
    with pytest.raises(BundleManifestInvalid) as info:
        load_bundle(bundle_copy)
    assert "field 'top_k'" in str(info.value) and "field 'num_items'" in str(info.value)


def test_load_bundle_vocab_size_differs_from_manifest(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, num_items=61)
    with pytest.raises(BundleManifestInvalid, match="vocabulary has 60 items .* 61"):
        load_bundle(bundle_copy)


def test_open_session_graph_output_differs(bundle_copy: Path) -> None:
    model = onnx.load(str(bundle_copy / MODEL_FILE))
    for node in model.graph.node:  # the producer and the nodes that read it
        node.output[:] = ["scores" if o == OUTPUT_SCORES else o for o in node.output]
        node.input[:] = ["scores" if i == OUTPUT_SCORES else i for i in node.input]
    model.graph.output[1].name = "scores"
    onnx.save(model, str(bundle_copy / MODEL_FILE))
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    files = {**manifest["files"], MODEL_FILE: sha256_file(bundle_copy / MODEL_FILE)}
    _edit_manifest(bundle_copy, files=files)
    bundle = load_bundle(bundle_copy)  # hashes agree; only the signature is wrong
    with pytest.raises(BundleSignatureMismatch, match="output names are .*'scores'"):
        open_inference_session(bundle)


def test_open_session_top_k_differs(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    for output in manifest["outputs"]:
        output["shape"] = ["batch_size", 21]
    _edit_manifest(bundle_copy, outputs=manifest["outputs"], top_k=21)
    with pytest.raises(BundleSignatureMismatch, match="axis 1 is 20, manifest says 21"):
        open_inference_session(load_bundle(bundle_copy))


def test_bundle_errors_are_distinct_kinds() -> None:
    kinds = [
        BundleFileMissing,
        BundleHashMismatch,
        BundleSchemaVersionError,
        BundleSignatureMismatch,
        BundleManifestInvalid,
    ]
    assert all(issubclass(kind, BundleError) for kind in kinds)
    assert not any(issubclass(a, b) for a in kinds for b in kinds if a is not b)


def test_bundle_module_does_not_import_torch() -> None:
    code = "import skiprec.bundle, sys; assert 'torch' not in sys.modules, 'torch'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
