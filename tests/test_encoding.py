"""The same raw events rank the same tracks on the training side and the serving side.

Serving side: the bundle's manifest -> skiprec.encoding -> ONNX Runtime (what the
service does with a live session). Training side: the torch model, fed (a) one session
at a time from the raw events with no padding at all, and (b) through the evaluation
path (``skiprec.encoding.encode_events`` + ``training.scoring.TorchScorer``). The
sessions include unknown tracks (OOV), sessions longer than ``max_seq_len``
(truncation) and, for BERT4Rec, the appended mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skiprec.bundle import load_bundle, open_inference_session
from skiprec.encoding import (
    encode_events,
    encode_exclusions,
    encode_sessions,
    feedback_code,
)
from skiprec.manifest import (
    INPUT_CANDIDATES,
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    OUTPUT_INDICES,
    OUTPUT_SCORES,
)
from skiprec.policy import SessionPolicy
from skiprec.vocab import MASK_ID, NUM_SPECIAL
from training.checkpoint import load_run
from training.evaluation import apply_policy
from training.scoring import TorchScorer, encoding_spec

TOP_N = 10
RAW_SESSIONS: list[list[tuple[str, str]]] = [
    [("t3", "play"), ("t10", "skip"), ("t7", "play")],
    [("never-seen", "play"), ("t1", "skip"), ("also-unknown", "skip")],
    [(f"t{i}", "skip" if i % 3 == 0 else "play") for i in range(20, 33)],  # 13 > 8
    [("t42", "play")],
    [("t5", "play")] * 9,
]


def _serving_top(bundle_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """What the service computes for RAW_SESSIONS (skipped tracks excluded)."""
    bundle = load_bundle(bundle_dir)
    session = open_inference_session(bundle)
    encoded = [
        [
            (bundle.vocab.index(track), feedback_code(kind == "skip"))
            for track, kind in events
        ]
        for events in RAW_SESSIONS
    ]
    item_ids, feedback = encode_sessions(encoded, bundle.manifest.encoding_spec())
    skipped = [
        [
            bundle.vocab.index(t)
            for t, kind in events
            if kind == "skip" and t in bundle.vocab
        ]
        for events in RAW_SESSIONS
    ]
    indices, scores = session.run(
        [OUTPUT_INDICES, OUTPUT_SCORES],
        {
            INPUT_ITEM_IDS: item_ids,
            INPUT_FEEDBACK: feedback,
            INPUT_EXCLUDE: encode_exclusions(skipped),
            INPUT_CANDIDATES: np.zeros((len(skipped), 1), dtype=np.int64),
        },
    )
    return indices[:, :TOP_N], scores[:, :TOP_N]


def _top(scores: np.ndarray, banned: list[int]) -> tuple[np.ndarray, np.ndarray]:
    scores = scores.astype(np.float64).copy()
    scores[:NUM_SPECIAL] = -np.inf
    scores[banned] = -np.inf
    order = np.argsort(-scores, kind="stable")[:TOP_N]
    return order, scores[order]


def _unpadded_reference(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The torch model on each session alone, encoded by hand from the raw events."""
    run = load_run(run_dir)
    config = run.model.config
    tops, top_scores = [], []
    for events in RAW_SESSIONS:
        items = [run.vocab.index(track) for track, _ in events]
        codes = [1 if kind == "play" else 2 for _, kind in events]
        if config.backbone == "bert4rec":
            items, codes = [*items, MASK_ID], [*codes, 3]
        items, codes = items[-config.max_seq_len :], codes[-config.max_seq_len :]
        with torch.inference_mode():
            hidden = run.model(torch.tensor([items]), torch.tensor([codes]))
            scores = run.model.score(hidden[0, -1]).numpy()
        banned = [
            run.vocab.index(t) for t, k in events if k == "skip" and t in run.vocab
        ]
        top, top_score = _top(scores, banned)
        tops.append(top)
        top_scores.append(top_score)
    return np.stack(tops), np.stack(top_scores)


def _scorer_reference(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The offline evaluation path: encode_events + TorchScorer + apply_policy."""
    run = load_run(run_dir)
    histories = [
        encode_events([(t, kind == "skip") for t, kind in events], run.vocab)
        for events in RAW_SESSIONS
    ]
    scores = TorchScorer(run.model).score(histories)
    apply_policy(scores, histories, SessionPolicy(skipped="exclude"))
    pairs = [_top(row, []) for row in scores]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(params=["sasrec", "bert4rec"])
def backbone_dirs(request, tiny_run_dir, tiny_bundle_dir, make_run, make_bundle):
    if request.param == "sasrec":
        return tiny_run_dir, tiny_bundle_dir
    return make_run(backbone="bert4rec"), make_bundle(backbone="bert4rec", top_k=500)


def test_encoding_spec_is_the_same_on_both_sides(backbone_dirs) -> None:
    run_dir, bundle_dir = backbone_dirs
    spec = load_bundle(bundle_dir).manifest.encoding_spec()
    assert encoding_spec(load_run(run_dir).model) == spec
    assert spec.append_mask == (load_run(run_dir).model.config.backbone == "bert4rec")


def test_same_events_rank_the_same_tracks_unpadded_torch(backbone_dirs) -> None:
    run_dir, bundle_dir = backbone_dirs
    served, served_scores = _serving_top(bundle_dir)
    reference, reference_scores = _unpadded_reference(run_dir)
    np.testing.assert_array_equal(served, reference)
    np.testing.assert_allclose(served_scores, reference_scores, atol=1e-4)


def test_same_events_rank_the_same_tracks_evaluation_path(backbone_dirs) -> None:
    run_dir, bundle_dir = backbone_dirs
    served, served_scores = _serving_top(bundle_dir)
    reference, reference_scores = _scorer_reference(run_dir)
    np.testing.assert_array_equal(served, reference)
    np.testing.assert_allclose(served_scores, reference_scores, atol=1e-4)


def test_oov_and_truncation_change_the_input(tiny_run_dir) -> None:
    """Guards the fixtures above: OOV maps to index 1, long sessions are cut left."""
    run = load_run(tiny_run_dir)
    encoded = [
        [
            (run.vocab.index(track), feedback_code(kind == "skip"))
            for track, kind in events
        ]
        for events in RAW_SESSIONS
    ]
    item_ids, _ = encode_sessions(encoded, encoding_spec(run.model))
    assert item_ids.shape == (len(RAW_SESSIONS), 8)
    assert item_ids[1, -3:].tolist() == [1, run.vocab.index("t1"), 1]
    assert item_ids[2].tolist() == run.vocab.indices(f"t{i}" for i in range(25, 33))
