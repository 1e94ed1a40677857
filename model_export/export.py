"""Export a training run to a versioned ONNX bundle the service can trust.

    skiprec export --run RUN_DIR --out BUNDLE_DIR [--data PATH] [--top-k K]
                   [--precision fp32|int8] [--model-version V] [--force]

Steps: load the run (training/checkpoint.py) -> wrap it in ``ServingModule`` ->
``torch.onnx.export`` (dynamo exporter, named dynamic axes, opset ``OPSET``) ->
``onnx.checker`` -> parity against torch on >= 1,000 sessions (``model_export/parity``)
-> vocab.json, popularity.json, manifest.json with the sha256 of every file -> the
bundle is re-read through the service's loader (``skiprec.bundle``) -> renamed into
place. Everything is written to a temporary sibling directory first, so a half-written
or parity-failing bundle is never visible at ``BUNDLE_DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.graph import export_graph
from model_export.parity import (
    MIN_PARITY_SESSIONS,
    PARITY_ATOL,
    ParityError,
    check_parity,
    expected_signature,
    synthetic_sessions,
)
from model_export.quantize import measure_drift, quantize_item_table
from model_export.retrieval import ParityRecallError, export_retrieval
from model_export.wrapper import ServingModule
from skiprec.bundle import (
    BundleError,
    load_bundle,
    open_inference_session,
    open_retrieval,
    sha256_file,
)
from skiprec.encoding import (
    FEEDBACK_PLAY,
    EncodingSpec,
    Session,
    encode_graded_events,
)
from skiprec.manifest import (
    DEFAULT_VECTOR_DTYPE,
    INPUT_NAMES,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_NAMES,
    POPULARITY_FILE,
    RETRIEVAL_FILES,
    SCHEMA_VERSION,
    VECTOR_DTYPES,
    VOCAB_FILE,
    Manifest,
    VectorDtype,
)
from skiprec.retrieval import NUM_CANDIDATES
from skiprec.vocab import NUM_SPECIAL, SPECIAL_IDS, Vocabulary
from training.checkpoint import load_run

logger = logging.getLogger(__name__)

OPSET = 18
DEFAULT_TOP_K = 200  # the API's max k: a larger K only costs TopK time per row
PRECISIONS = ("fp32", "int8")
FP32_MODEL_FILE = "model.fp32.onnx"  # staging only: the int8 variant's parity reference
# From this catalogue size on, two stages cost less per request than scoring every
# track (docs/BENCHMARKS.md, "Two-stage retrieval": the measured crossover).
DEFAULT_ANN_MIN_TRACKS = 50_000


def export_bundle(
    run_dir: Path,
    out_dir: Path,
    *,
    top_k: int = DEFAULT_TOP_K,
    parity_sessions: Sequence[Session] | None = None,
    data_path: Path | None = None,
    model_version: str | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
    ann_min_tracks: int | None = DEFAULT_ANN_MIN_TRACKS,
    ann_candidates: int = NUM_CANDIDATES,
    ann_vectors: VectorDtype = DEFAULT_VECTOR_DTYPE,
    ann_required: bool = False,
) -> Manifest:
    """Export ``run_dir`` to the bundle directory ``out_dir`` and return its manifest.

    Args:
        parity_sessions: encoded ``(item_index, feedback_code)`` sessions for parity;
            topped up with seeded synthetic sessions to ``MIN_PARITY_SESSIONS``.
        data_path: a session file (training.data.load_sessions) to draw parity
            sessions from, when ``parity_sessions`` is not given.
        precision: "fp32", or "int8" for the quantised scoring MatMul
            (model_export/quantize.py); parity is checked on the fp32 graph first.
        overwrite: replace an existing non-empty ``out_dir``.
        ann_min_tracks: a catalogue of at least this many tracks also gets the
            two-stage files (model_export/retrieval.py), checked against the full
            graph; 0 builds them for any catalogue; None never.
        ann_candidates: ANN hits per session in the two-stage path.
        ann_vectors: the index's vector precision, "f16" (the default) or "f32"
            (the recall check judges it like any index).
        ann_required: a two-stage path below the recall floor fails the export;
            otherwise (the default threshold's case) the bundle is written without
            it, ranking the whole catalogue, and a warning says why.

    Raises:
        ParityError: ONNX Runtime disagrees with torch (or the two-stage path with
            the full graph); nothing is written.
        FileExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is False.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out_dir = Path(out_dir)
    if _is_nonempty_dir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --force")
    started = time.perf_counter()
    run = load_run(Path(run_dir))
    config = run.model.config
    module = ServingModule(run.model, top_k, prior=run.prior)
    spec = EncodingSpec.for_model(
        config.backbone, config.max_seq_len, graded=config.graded_feedback
    )
    if parity_sessions is None and data_path is not None:
        parity_sessions = sessions_from_data(Path(data_path), run.vocab, spec.graded)
    sessions = list(parity_sessions or [])
    if len(sessions) < MIN_PARITY_SESSIONS:
        sessions += synthetic_sessions(
            config.num_items,
            config.max_seq_len,
            MIN_PARITY_SESSIONS - len(sessions),
            graded=spec.graded,
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    metrics = dict(run.metrics)
    if run.prior is not None:
        # What the graph adds, read from the run's prior.npz (the tuning record of the
        # run's metrics, when it has one, is kept beside it).
        metrics["prior"] = {**metrics.get("prior", {}), **run.prior.describe()}
    try:
        fp32_path = staging / (FP32_MODEL_FILE if precision == "int8" else MODEL_FILE)
        export_onnx(module, fp32_path)
        # Parity is always torch vs the fp32 graph; int8 is then held to its drift
        # from that graph (no atol of 1e-4 can hold for int8 weights).
        parity = check_parity(module, fp32_path, sessions, spec, PARITY_ATOL)
        retrieval = None
        if ann_min_tracks is not None and (
            config.num_items - NUM_SPECIAL >= ann_min_tracks
        ):
            # Checked against the fp32 graph, as parity is.
            try:
                retrieval = export_retrieval(
                    module,
                    staging,
                    fp32_path,
                    sessions,
                    spec,
                    OPSET,
                    min_tracks=ann_min_tracks,
                    num_candidates=ann_candidates,
                    vectors=ann_vectors,
                )
            except ParityRecallError as exc:
                if ann_required:
                    raise
                # Exact scoring is slower but never worse: ship it rather than fail
                # an export nobody asked to be two-stage.
                logger.warning("no two-stage path, whole-catalogue scoring: %s", exc)
                for name in RETRIEVAL_FILES:
                    (staging / name).unlink(missing_ok=True)
                metrics["retrieval_refused"] = str(exc)
        if precision == "int8":
            quantize_item_table(fp32_path, staging / MODEL_FILE)
            drift = measure_drift(
                fp32_path, staging / MODEL_FILE, sessions, spec, config.num_items
            )
            metrics["int8_drift"] = drift.to_dict()
            fp32_path.unlink()
        run.vocab.save(staging / VOCAB_FILE)
        (staging / POPULARITY_FILE).write_text(json.dumps(run.popularity))
        listed = (MODEL_FILE, VOCAB_FILE, POPULARITY_FILE)
        files = {
            name: sha256_file(staging / name)
            for name in listed + (RETRIEVAL_FILES if retrieval else ())
        }
        created_at = datetime.now(UTC).replace(microsecond=0)
        inputs, outputs = expected_signature(module.top_k)
        manifest = Manifest.model_validate(
            {
                "schema_version": SCHEMA_VERSION,
                "model_version": model_version
                or default_model_version(
                    config.backbone, created_at, files[MODEL_FILE]
                ),
                "created_at": created_at,
                "backbone": config.backbone,
                "model_config": config.to_dict(),
                "train_config": run.train_config,
                "max_seq_len": spec.max_seq_len,
                "truncation": spec.truncation,
                "padding": spec.padding,
                "append_mask": spec.append_mask,
                "feedback_codes": dict(spec.feedback_codes),
                "special_ids": dict(SPECIAL_IDS),
                "num_items": config.num_items,
                "top_k": module.top_k,
                "opset": OPSET,
                "inputs": inputs,
                "outputs": outputs,
                "files": files,
                "metrics": metrics,
                "data_fingerprint": run.data_fingerprint,
                "parity": parity,
                "precision": precision,
                "skip_head": module.skip_head,
                "skip_weight": module.skip_weight,
                "policy": run.metrics.get("policy", {}).get("chosen"),
                "retrieval": retrieval,
            }
        )
        (staging / MANIFEST_FILE).write_text(
            manifest.model_dump_json(by_alias=True, indent=2)
        )
        # Read it back exactly as the service will, before anyone can see it.
        bundle = load_bundle(staging)
        open_inference_session(bundle)
        open_retrieval(bundle)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "exported %s (%s, V=%d, K=%d) to %s in %.1fs",
        manifest.model_version,
        manifest.backbone,
        manifest.num_items,
        manifest.top_k,
        out_dir,
        time.perf_counter() - started,
    )
    return manifest


def default_model_version(
    backbone: str, created_at: datetime, model_sha256: str
) -> str:
    """``<backbone>-<UTC yyyymmddHHMMSS>-<first 8 hex of the model's sha256>``."""
    return f"{backbone}-{created_at.astimezone(UTC):%Y%m%d%H%M%S}-{model_sha256[:8]}"


def export_onnx(module: ServingModule, path: Path) -> None:
    """The serving graph (model.onnx) with named dynamic axes, checked."""
    max_seq_len = module.encoder.config.max_seq_len
    batch = torch.export.Dim("batch_size", min=1)
    sequence = torch.export.Dim("sequence_length", min=1, max=max_seq_len)
    excluded = torch.export.Dim("num_excluded", min=1)
    candidates = torch.export.Dim("num_candidates", min=1)
    # Example sizes >= 2 (and distinct for E and N) so no axis is specialised to the
    # size-1 case or tied to another.
    seq_len = min(3, max_seq_len)
    example = (
        torch.full((2, seq_len), module.encoder.config.num_items - 1),
        torch.full((2, seq_len), FEEDBACK_PLAY),
        torch.zeros((2, 2), dtype=torch.int64),
        torch.zeros((2, 3), dtype=torch.int64),
    )
    export_graph(
        module,
        example,
        INPUT_NAMES,
        OUTPUT_NAMES,
        {
            "item_ids": {0: batch, 1: sequence},
            "feedback": {0: batch, 1: sequence},
            "exclude_ids": {0: batch, 1: excluded},
            "candidate_ids": {0: batch, 1: candidates},
        },
        path,
        OPSET,
    )


def sessions_from_data(
    data_path: Path,
    vocab: Vocabulary,
    graded: bool = False,
    num_sessions: int = MIN_PARITY_SESSIONS,
    seed: int = 0,
) -> list[list[tuple[int, int]]]:
    """A seeded sample of real sessions from ``data_path``, encoded with ``vocab``
    (with their skip levels for a ``graded`` model, when the data has them)."""
    from training.data import load_sessions

    sessions = load_sessions(data_path)
    rng = np.random.default_rng(seed)
    picked = rng.choice(
        len(sessions), size=min(num_sessions, len(sessions)), replace=False
    )
    encoded = []
    for i in sorted(picked.tolist()):
        session = sessions[i]
        events = zip(session.track_ids, session.skipped, strict=True)
        encoded.append(encode_graded_events(events, session.levels, vocab, graded))
    return encoded


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished bundle to ``out_dir``; an old bundle there is swapped out
    with two renames, so readers see either the old or the new bundle whole."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    retired = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skiprec export", description="Export a training run to an ONNX bundle."
    )
    # Input and output
    parser.add_argument(
        "--run", type=Path, required=True, help="training run directory"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="bundle directory to write"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing bundle at --out"
    )
    # Graph
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"K, tracks returned per session (default {DEFAULT_TOP_K}; capped at "
        "the catalogue size)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="int8: quantise the catalogue-scoring MatMul (faster, small ranking "
        "drift recorded in the manifest); default fp32",
    )
    # Two-stage retrieval
    ann = parser.add_mutually_exclusive_group()
    ann.add_argument(
        "--ann-min-tracks",
        type=int,
        help="build the ANN index and retrieval graphs for catalogues of at least "
        "this many tracks (0 = always), and fail when their recall@10 is below the "
        f"floor; default {DEFAULT_ANN_MIN_TRACKS:,}, where a recall miss only "
        "drops them (docs/BENCHMARKS.md)",
    )
    ann.add_argument(
        "--no-ann", action="store_true", help="never build the two-stage path"
    )
    parser.add_argument(
        "--ann-candidates",
        type=int,
        default=NUM_CANDIDATES,
        help=f"ANN hits per session (default {NUM_CANDIDATES})",
    )
    parser.add_argument(
        "--ann-vectors",
        choices=VECTOR_DTYPES,
        default=DEFAULT_VECTOR_DTYPE,
        help="the index's vector precision (default %(default)s: half the memory "
        "of f32 for a search to walk, the same recall after exact re-scoring; i8: "
        "a quarter, searched on integer dot products)",
    )
    # Provenance and parity
    parser.add_argument(
        "--data",
        type=Path,
        help="session file to draw parity sessions from (default: synthetic sessions)",
    )
    parser.add_argument(
        "--model-version",
        help="version string (default <backbone>-<UTC time>-<model sha256 prefix>)",
    )
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        # Our progress at INFO; the exporter's optimizer passes log far too much there.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        logging.getLogger("model_export").setLevel(logging.INFO)
    try:
        manifest = export_bundle(
            args.run,
            args.out,
            top_k=args.top_k,
            data_path=args.data,
            model_version=args.model_version,
            precision=args.precision,
            overwrite=args.force,
            ann_min_tracks=None
            if args.no_ann
            else DEFAULT_ANN_MIN_TRACKS
            if args.ann_min_tracks is None
            else args.ann_min_tracks,
            ann_candidates=args.ann_candidates,
            ann_vectors=args.ann_vectors,
            ann_required=args.ann_min_tracks is not None,
        )
    except (ParityError, BundleError, FileExistsError, FileNotFoundError) as exc:
        logger.error("export failed, nothing written: %s", exc)
        return 1
    summary: dict[str, Any] = {
        "model_version": manifest.model_version,
        "bundle": str(args.out),
        "parity": manifest.parity.model_dump(),
    }
    logger.info("%s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
