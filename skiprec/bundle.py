"""Load and verify a model bundle for serving; torch-free (onnxruntime, pydantic).

A bundle is a directory written by ``skiprec export`` (``model_export/export.py``)::

    manifest.json     skiprec.manifest.Manifest (lists every other file with its sha256)
    model.onnx        the serving graph: sessions (+ candidate tracks) -> top-K track
                      indices, scores and p_skip, and the candidates' scores and p_skip
    vocab.json        skiprec.vocab.Vocabulary
    popularity.json   {track_id: play count} for the cold-start fallback
    query.onnx        optional, with the next two (manifest field ``retrieval``):
                      sessions -> query vectors and the prior's successors
    candidates.onnx   query vectors + candidate tracks -> model.onnx's scores of them
    tracks.index      the ANN index over the tracks' embeddings (skiprec.retrieval)

Nothing is trusted before it is checked: ``load_bundle`` validates the manifest schema
and version and the presence and sha256 of every listed file;
``open_inference_session`` checks the graph's inputs and outputs against the manifest,
and ``open_retrieval`` does the same for the two retrieval graphs and opens the index.
Each file is read once, into memory, and hashed and parsed from those bytes (the graph
too: ONNX Runtime gets the bytes, not the path), so a directory replaced while it is
being loaded can only fail the hash check, never pair one manifest with another graph.

Exceptions (each message names the file or field and says what to do)::

    BundleError
     +-- BundleFileMissing          a listed file (or manifest.json) is absent
     +-- BundleHashMismatch         a file's sha256 differs from the manifest
     +-- BundleSchemaVersionError   manifest written for another schema version
     +-- BundleManifestInvalid      manifest.json is not JSON / has invalid fields
     +-- BundleSignatureMismatch    model.onnx inputs/outputs differ from the manifest
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
from pydantic import ValidationError

from skiprec.encoding import BINARY_FEEDBACK_CODES, FEEDBACK_CODES
from skiprec.manifest import (
    CANDIDATES_MODEL_FILE,
    INDEX_FILE,
    INPUT_CANDIDATES,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_CANDIDATE_P_SKIP,
    OUTPUT_CANDIDATE_SCORES,
    OUTPUT_P_SKIP,
    POPULARITY_FILE,
    QUERY_MODEL_FILE,
    RETRIEVAL_FILES,
    SCHEMA_VERSION,
    VOCAB_FILE,
    Manifest,
    TensorSpec,
)
from skiprec.retrieval import Retrieval, load_index
from skiprec.vocab import NUM_SPECIAL, SPECIAL_IDS, Vocabulary

REQUIRED_FILES = (MODEL_FILE, VOCAB_FILE, POPULARITY_FILE)
_REEXPORT = "re-export the run with `skiprec export --run RUN_DIR --out BUNDLE_DIR`"

# ONNX Runtime's type strings for the dtypes a TensorSpec may declare.
ORT_TYPES = {
    "int64": "tensor(int64)",
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
}


class BundleError(Exception):
    """Base class: the bundle at ``path`` cannot be served."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class BundleFileMissing(BundleError):
    """A file the bundle needs is absent."""


class BundleHashMismatch(BundleError):
    """A file's sha256 differs from the one recorded in the manifest."""


class BundleSchemaVersionError(BundleError):
    """The manifest was written for a schema version this code does not read."""


class BundleManifestInvalid(BundleError):
    """manifest.json (or a file it lists) is not valid JSON or has an invalid field."""


class BundleSignatureMismatch(BundleError):
    """The ONNX graph's inputs/outputs differ from those the manifest declares."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    vocab: Vocabulary
    popularity: dict[str, int]
    # The graph as hashed; ``open_inference_session`` builds the session from these.
    model_bytes: bytes = field(repr=False)
    # query.onnx, candidates.onnx, tracks.index as hashed; empty without retrieval.
    retrieval_bytes: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: Path) -> Bundle:
    """Read and verify the bundle directory ``path`` (see the module docstring)."""
    path = Path(path)
    manifest = _read_manifest(path)
    required = REQUIRED_FILES + (RETRIEVAL_FILES if manifest.retrieval else ())
    for name in required:
        if name not in manifest.files:
            raise BundleManifestInvalid(
                path / MANIFEST_FILE,
                f"field 'files' does not list {name!r}; {_REEXPORT}",
            )
    contents: dict[str, bytes] = {}
    for name, expected in manifest.files.items():
        file_path = path / name
        data = _read_file(
            file_path,
            f"listed in {MANIFEST_FILE} but missing; copy the whole bundle "
            f"directory or {_REEXPORT}",
        )
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise BundleHashMismatch(
                file_path,
                f"sha256 {actual} differs from {expected} in {MANIFEST_FILE}; the file "
                f"was modified or truncated after export; {_REEXPORT}",
            )
        if name in required:  # other listed files are only verified
            contents[name] = data
    vocab = _read_vocab(path / VOCAB_FILE, contents[VOCAB_FILE], manifest)
    popularity = _read_popularity(path / POPULARITY_FILE, contents[POPULARITY_FILE])
    return Bundle(
        path=path,
        manifest=manifest,
        vocab=vocab,
        popularity=popularity,
        model_bytes=contents[MODEL_FILE],
        retrieval_bytes={
            name: contents[name] for name in RETRIEVAL_FILES if name in contents
        },
    )


def _read_file(file_path: Path, missing: str) -> bytes:
    """The whole file, read once; absent (or not a file) is ``BundleFileMissing``."""
    try:
        return file_path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise BundleFileMissing(file_path, missing) from exc
    except OSError as exc:
        raise BundleFileMissing(
            file_path, f"cannot be read ({exc.strerror}); check its permissions"
        ) from exc


def _read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_FILE
    data = _read_file(
        manifest_path,
        f"no {MANIFEST_FILE}; is {path} a bundle directory written by "
        f"`skiprec export`?",
    )
    payload = _parse_json(manifest_path, data)
    if not isinstance(payload, dict):
        raise BundleManifestInvalid(
            manifest_path, f"expected a JSON object, got {type(payload).__name__}"
        )
    # The version is checked before the fields: another version may have other fields.
    version = payload.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version == 1:
        raise BundleSchemaVersionError(
            manifest_path,
            f"field 'schema_version' is 1: the bundle was exported before candidate "
            f"scoring and p_skip (schema {SCHEMA_VERSION} adds the graph input "
            f"{INPUT_CANDIDATES!r} and the outputs {OUTPUT_P_SKIP!r}, "
            f"{OUTPUT_CANDIDATE_SCORES!r}, {OUTPUT_CANDIDATE_P_SKIP!r}); {_REEXPORT} "
            f"(the run directory is unchanged, only the bundle is rewritten)",
        )
    if version != SCHEMA_VERSION:
        raise BundleSchemaVersionError(
            manifest_path,
            f"field 'schema_version' is {version!r} but this skiprec reads version "
            f"{SCHEMA_VERSION}; {_REEXPORT} with this skiprec version, or serve it "
            f"with the skiprec version that wrote it",
        )
    try:
        manifest = Manifest.model_validate(payload)
    except ValidationError as exc:
        fields = "; ".join(
            f"field {'.'.join(map(str, err['loc']))!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise BundleManifestInvalid(manifest_path, f"{fields}; {_REEXPORT}") from exc
    if manifest.special_ids != dict(SPECIAL_IDS):
        raise BundleManifestInvalid(
            manifest_path,
            f"field 'special_ids' is {manifest.special_ids!r}, this skiprec uses "
            f"{dict(SPECIAL_IDS)!r}; {_REEXPORT}",
        )
    if manifest.feedback_codes not in (
        dict(FEEDBACK_CODES),
        dict(BINARY_FEEDBACK_CODES),
    ):
        raise BundleManifestInvalid(
            manifest_path,
            f"field 'feedback_codes' is {manifest.feedback_codes!r}, this skiprec "
            f"uses {dict(FEEDBACK_CODES)!r} (or the binary "
            f"{dict(BINARY_FEEDBACK_CODES)!r}); {_REEXPORT}",
        )
    return manifest


def _read_vocab(vocab_path: Path, data: bytes, manifest: Manifest) -> Vocabulary:
    try:
        vocab = Vocabulary.from_json(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise BundleManifestInvalid(
            vocab_path, f"not a valid vocabulary ({exc}); {_REEXPORT}"
        ) from exc
    if vocab.size != manifest.num_items:
        raise BundleManifestInvalid(
            vocab_path,
            f"vocabulary has {vocab.size} items (specials included) but field "
            f"'num_items' in {MANIFEST_FILE} says {manifest.num_items}; {_REEXPORT}",
        )
    return vocab


def _parse_json(path: Path, data: bytes) -> Any:
    """A bundle file's JSON; a file that is not JSON is an invalid bundle."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"not valid JSON ({exc}); {_REEXPORT}"
        raise BundleManifestInvalid(path, problem) from exc


def _read_popularity(popularity_path: Path, data: bytes) -> dict[str, int]:
    payload = _parse_json(popularity_path, data)
    if not isinstance(payload, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in payload.items()
    ):
        raise BundleManifestInvalid(
            popularity_path,
            f"expected an object {{track_id: count}} of integers; {_REEXPORT}",
        )
    return payload


def session_options(
    intra_op_threads: int = 1, inter_op_threads: int = 1
) -> ort.SessionOptions:
    """The options every skiprec graph runs with (export parity uses the same)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def open_inference_session(
    bundle: Bundle, intra_op_threads: int = 1, inter_op_threads: int = 1
) -> ort.InferenceSession:
    """Open the bundle's graph (the bytes ``load_bundle`` hashed, not the file) on CPU
    and check its signature against the manifest.

    Raises:
        BundleSignatureMismatch: names, dtypes, ranks or fixed dimensions differ.
    """
    return _open_graph(
        bundle.model_path,
        bundle.model_bytes,
        bundle.manifest.inputs,
        bundle.manifest.outputs,
        session_options(intra_op_threads, inter_op_threads),
    )


def open_retrieval(
    bundle: Bundle, intra_op_threads: int = 1, inter_op_threads: int = 1
) -> Retrieval | None:
    """The bundle's two-stage path (its graphs checked like ``model.onnx``), or None
    for a bundle without one.

    Raises:
        BundleSignatureMismatch: a retrieval graph's signature differs, or the index
            cannot be read or does not match the item table.
    """
    spec = bundle.manifest.retrieval
    if spec is None:
        return None
    options = session_options(intra_op_threads, inter_op_threads)
    data = bundle.retrieval_bytes
    query = _open_graph(
        bundle.path / QUERY_MODEL_FILE,
        data[QUERY_MODEL_FILE],
        spec.query_inputs,
        spec.query_outputs,
        options,
    )
    candidates = _open_graph(
        bundle.path / CANDIDATES_MODEL_FILE,
        data[CANDIDATES_MODEL_FILE],
        spec.candidates_inputs,
        spec.candidates_outputs,
        options,
    )
    index_path = bundle.path / INDEX_FILE
    try:
        index = load_index(data[INDEX_FILE], spec)
    except Exception as exc:  # usearch raises untyped errors for unreadable files
        raise BundleSignatureMismatch(
            index_path, f"the index cannot be read ({exc}); {_REEXPORT}"
        ) from exc
    num_tracks = bundle.manifest.num_items - NUM_SPECIAL
    query_dim = spec.query_outputs[0].shape[-1]
    if len(index) != num_tracks or index.ndim != query_dim:
        raise BundleSignatureMismatch(
            index_path,
            f"the index holds {len(index)} vectors of {index.ndim} dimensions, the "
            f"model {num_tracks} tracks and queries of {query_dim}; {_REEXPORT}",
        )
    if spec.scales and len(spec.scales) != index.ndim:
        raise BundleSignatureMismatch(
            index_path,
            f"the manifest has {len(spec.scales)} scales for an index of "
            f"{index.ndim} dimensions; {_REEXPORT}",
        )
    stored = index.dtype.name.lower()
    if stored != spec.vectors:
        raise BundleSignatureMismatch(
            index_path,
            f"the index stores {stored} vectors, the manifest says {spec.vectors}; "
            f"{_REEXPORT}",
        )
    return Retrieval(query, candidates, index, spec)


def _open_graph(
    path: Path,
    data: bytes,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: ort.SessionOptions,
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``data`` whose signature matches the manifest."""
    try:
        session = ort.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own untyped errors for unreadable graphs
        raise BundleSignatureMismatch(
            path, f"ONNX Runtime cannot load the graph ({exc}); {_REEXPORT}"
        ) from exc
    problems = signature_problems(
        session.get_inputs(), inputs, "input"
    ) + signature_problems(session.get_outputs(), outputs, "output")
    if problems:
        raise BundleSignatureMismatch(
            path,
            f"graph signature differs from {MANIFEST_FILE}: "
            f"{'; '.join(problems)}; {_REEXPORT}",
        )
    return session


def signature_problems(
    actual: list[Any], expected: list[TensorSpec], kind: str, source: str = "manifest"
) -> list[str]:
    """Differences between ORT ``NodeArg``s and the expected TensorSpecs, in words;
    ``source`` names where the expectation comes from."""
    problems: list[str] = []
    actual_names = [arg.name for arg in actual]
    expected_names = [spec.name for spec in expected]
    if actual_names != expected_names:
        problems.append(
            f"{kind} names are {actual_names}, {source} says {expected_names}"
        )
    by_name = {arg.name: arg for arg in actual}
    for spec in expected:
        arg = by_name.get(spec.name)
        if arg is None:
            continue
        if arg.type != ORT_TYPES[spec.dtype]:
            problems.append(
                f"{kind} {spec.name!r} is {arg.type}, {source} says {spec.dtype}"
            )
        if len(arg.shape) != len(spec.shape):
            problems.append(
                f"{kind} {spec.name!r} has rank {len(arg.shape)}, "
                f"{source} says {len(spec.shape)}"
            )
            continue
        for axis, (got, want) in enumerate(zip(arg.shape, spec.shape, strict=True)):
            # Only fixed sizes compare; symbolic names are the exporter's choice.
            if isinstance(got, int) and isinstance(want, int) and got != want:
                problems.append(
                    f"{kind} {spec.name!r} axis {axis} is {got}, {source} says {want}"
                )
    return problems
