"""Export of a run with a transition prior: the prior is inside the graph, parity holds
with it, the manifest records it, and the graph's I/O is the one without a prior."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from model_export.export import export_bundle
from model_export.parity import (
    MIN_PARITY_SESSIONS,
    PARITY_ATOL,
    ParityValueError,
    check_parity,
    synthetic_sessions,
)
from model_export.wrapper import ServingModule
from skiprec.bundle import load_bundle, open_inference_session
from skiprec.encoding import encode_exclusions, encode_sessions
from skiprec.manifest import (
    INPUT_CANDIDATES,
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    MODEL_FILE,
    OUTPUT_INDICES,
    OUTPUT_SCORES,
)
from skiprec.vocab import NUM_SPECIAL, OOV_ID
from tests.conftest import TINY_NUM_TRACKS, TINY_TOP_K
from training.checkpoint import load_run
from training.data import Session
from training.prior import PRIOR_FILE, TransitionPrior, fit_transitions
from training.scoring import TorchScorer

ALPHA, GAMMA = 1.5, 0.5  # large enough that the prior reorders the random model's list


def _add_prior(run_dir: Path, num_successors: int = 16) -> TransitionPrior:
    """Fit a prior on seeded random sessions over the tiny run's tracks; save it."""
    vocab = load_run(run_dir).vocab
    rng = np.random.default_rng(0)
    sessions = [
        Session(
            f"s{i}",
            tuple(f"t{j}" for j in rng.integers(0, TINY_NUM_TRACKS, size=12)),
            (False,) * 12,
        )
        for i in range(400)
    ]
    prior = fit_transitions(sessions, vocab, num_successors).with_weights(ALPHA, GAMMA)
    prior.save(run_dir / PRIOR_FILE)
    return prior


@pytest.fixture(scope="module", params=["sasrec", "bert4rec"])
def prior_export(request, make_run, tmp_path_factory):
    """(run dir with a prior, its bundle, the same run's bundle without the prior)."""
    plain_run = make_run(backbone=request.param)
    plain_bundle = tmp_path_factory.mktemp("plain") / "bundle"
    export_bundle(plain_run, plain_bundle, top_k=TINY_TOP_K)
    run_dir = make_run(backbone=request.param)  # same seed: the same weights
    _add_prior(run_dir)
    bundle_dir = tmp_path_factory.mktemp("prior") / "bundle"
    export_bundle(run_dir, bundle_dir, top_k=TINY_TOP_K)
    return run_dir, bundle_dir, plain_bundle


def _run_graph(bundle_dir, sessions, excluded):
    bundle = load_bundle(bundle_dir)
    spec = bundle.manifest.encoding_spec()
    item_ids, feedback = encode_sessions(sessions, spec)
    return open_inference_session(bundle).run(
        [OUTPUT_INDICES, OUTPUT_SCORES],
        {
            INPUT_ITEM_IDS: item_ids,
            INPUT_FEEDBACK: feedback,
            INPUT_EXCLUDE: encode_exclusions(excluded),
            INPUT_CANDIDATES: np.zeros((len(sessions), 1), dtype=np.int64),
        },
    )


def test_export_with_prior_records_it_and_keeps_the_graph_io(prior_export):
    run_dir, bundle_dir, plain_bundle = prior_export
    manifest = load_bundle(bundle_dir).manifest
    plain = load_bundle(plain_bundle).manifest
    assert manifest.metrics["prior"] == {
        "num_successors": 16,
        "alpha": ALPHA,
        "gamma": GAMMA,
    }
    assert "prior" not in plain.metrics
    assert manifest.inputs == plain.inputs and manifest.outputs == plain.outputs
    assert manifest.parity.num_sessions >= MIN_PARITY_SESSIONS
    assert manifest.parity.max_abs_diff <= PARITY_ATOL
    assert manifest.parity.top10_agreement >= 0.999
    graph = onnx.load(str(bundle_dir / MODEL_FILE)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    prior = load_run(run_dir).prior
    assert prior is not None
    (successors,) = [v for n, v in constants.items() if "prior_successors" in n]
    np.testing.assert_array_equal(successors, prior.successors)
    assert "ScatterElements" in {node.op_type for node in graph.node}


def test_exported_prior_ranks_as_the_torch_scorer(prior_export):
    run_dir, bundle_dir, plain_bundle = prior_export
    sessions = [
        [(5, 1), (9, 2), (12, 1)],
        [(OOV_ID, 1)],
        [(NUM_SPECIAL + i, 1 + i % 2) for i in range(12)],  # longer than the window
        [(7, 1), (OOV_ID, 2)],  # last event unknown: the prior reads track 7
    ]
    excluded = [[9], [], [NUM_SPECIAL], []]
    indices, scores = _run_graph(bundle_dir, sessions, excluded)
    run = load_run(run_dir)
    expected = TorchScorer(run.model, prior=run.prior).score(sessions)
    for row, banned in enumerate(excluded):
        expected[row, banned] = -np.inf
    ranked = np.isfinite(scores)
    np.testing.assert_allclose(
        scores[ranked],
        np.take_along_axis(expected, indices, axis=1)[ranked],
        atol=PARITY_ATOL,
    )
    best = np.sort(expected, axis=1)[:, ::-1][:, :TINY_TOP_K]
    np.testing.assert_allclose(scores, best, atol=PARITY_ATOL)
    # The prior changes what the graph returns.
    plain_indices, _ = _run_graph(plain_bundle, sessions, excluded)
    assert not np.array_equal(indices, plain_indices)


def test_parity_catches_a_changed_prior_table(prior_export, tmp_path):
    run_dir, bundle_dir, _ = prior_export
    model = onnx.load(str(bundle_dir / MODEL_FILE))
    (table,) = [t for t in model.graph.initializer if "prior_table" in t.name]
    values = numpy_helper.to_array(table).copy()  # [V, N]
    values[NUM_SPECIAL : NUM_SPECIAL + 20, 0] += 0.5
    table.CopyFrom(numpy_helper.from_array(values, table.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(model, str(perturbed))
    run = load_run(run_dir)
    spec = load_bundle(bundle_dir).manifest.encoding_spec()
    module = ServingModule(run.model, TINY_TOP_K, prior=run.prior)
    sessions = synthetic_sessions(run.model.config.num_items, 8, MIN_PARITY_SESSIONS)
    with pytest.raises(ParityValueError, match="differ by more than atol"):
        check_parity(module, perturbed, sessions, spec)
    report = check_parity(module, bundle_dir / MODEL_FILE, sessions, spec)
    assert report.max_abs_diff <= PARITY_ATOL


def test_serving_module_refuses_a_prior_of_another_vocabulary(tiny_run_dir):
    run = load_run(tiny_run_dir)
    other = TransitionPrior(
        np.zeros((5, 2), dtype=np.int64), np.zeros((5, 2), dtype=np.float32)
    )
    with pytest.raises(ValueError, match="rows, the model"):
        ServingModule(run.model, TINY_TOP_K, prior=other)


def test_old_run_without_prior_exports_as_before(tiny_run_dir, tiny_bundle_dir):
    assert load_run(tiny_run_dir).prior is None
    assert "prior" not in load_bundle(tiny_bundle_dir).manifest.metrics
    names = {
        t.name for t in onnx.load(str(tiny_bundle_dir / MODEL_FILE)).graph.initializer
    }
    assert not any("prior" in name for name in names)
