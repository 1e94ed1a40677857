"""Parity: the comparison rules on hand-made arrays, then real and perturbed graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from model_export.parity import (
    CANDIDATE_WIDTHS,
    MIN_PARITY_SESSIONS,
    PARITY_ATOL,
    ParityShapeError,
    ParityValueError,
    check_parity,
    compare_outputs,
    compare_values,
    parity_batches,
    synthetic_sessions,
)
from model_export.wrapper import ServingModule
from skiprec.encoding import FEEDBACK_LEVEL_BASE, EncodingSpec
from skiprec.manifest import MODEL_FILE, OUTPUT_SCORES
from skiprec.vocab import OOV_ID, PAD_ID
from training.checkpoint import load_run

NEG = -np.inf
LOGITS = np.array([[NEG, NEG, NEG, 3.0, 2.0, 1.0, 0.5]])  # V=7, three specials


def test_compare_outputs_identical_has_no_failures() -> None:
    out = compare_outputs(np.array([[3, 4, 5]]), np.array([[3.0, 2.0, 1.0]]), LOGITS)
    assert out.max_abs_diff == 0.0
    assert out.value_failures == [] and out.topk_failures == []


def test_compare_outputs_names_row_position_and_values() -> None:
    out = compare_outputs(
        np.array([[3, 4, 5]]),
        np.array([[3.0, 2.001, 1.0]]),
        LOGITS,
        row_names=["session 7"],
    )
    assert out.max_abs_diff == pytest.approx(1e-3)
    assert len(out.value_failures) == 1
    failure = out.value_failures[0]
    assert "session 7, position 1" in failure
    assert "onnx item 4 score 2.001" in failure and "torch scores it 2" in failure


def test_compare_outputs_swapped_items_fail_values_and_topk() -> None:
    out = compare_outputs(np.array([[4, 3, 5]]), np.array([[2.0, 3.0, 1.0]]), LOGITS)
    assert out.value_failures and out.topk_mismatch_rows == [0]
    assert "position 0: onnx item 4 vs torch item 3" in out.topk_failures[0]


def test_compare_outputs_tie_within_atol_is_not_a_mismatch() -> None:
    logits = np.array([[NEG, NEG, NEG, 1.0, 1.0 + 5e-5, 0.0]])
    out = compare_outputs(np.array([[3, 4]]), np.array([[1.0, 1.0]]), logits)
    assert out.value_failures == [] and out.topk_mismatch_rows == []


def test_compare_outputs_near_tie_beyond_atol_is_a_topk_mismatch_only() -> None:
    # Each returned score is within atol of torch, but torch ranks the items 1.5e-4
    # apart: a different top-1, which only the top-k rule catches.
    logits = np.array([[NEG, NEG, NEG, 1.0, 1.00015, 0.0]])
    out = compare_outputs(np.array([[3, 4]]), np.array([[1.00008, 1.00008]]), logits)
    assert out.value_failures == []
    assert out.topk_mismatch_rows == [0]


def test_compare_outputs_infinities_and_nan() -> None:
    both_masked = compare_outputs(
        np.array([[3, 0]]), np.array([[3.0, NEG]]), LOGITS[:, :4]
    )
    assert both_masked.value_failures == []
    onnx_masked = compare_outputs(np.array([[3]]), np.array([[NEG]]), LOGITS)
    assert onnx_masked.value_failures and onnx_masked.max_abs_diff == np.inf
    nan = compare_outputs(np.array([[3]]), np.array([[np.nan]]), LOGITS)
    assert nan.value_failures


def test_parity_batches_cover_the_grid() -> None:
    spec = EncodingSpec(max_seq_len=8)
    sessions = synthetic_sessions(60, 8, MIN_PARITY_SESSIONS, seed=1)
    batches = parity_batches(sessions, spec, num_items=60)
    assert sum(len(b.item_ids) for b in batches) == MIN_PARITY_SESSIONS
    shapes = {b.item_ids.shape for b in batches}
    assert {T for _, T in shapes} >= {1, 8}
    assert {B for B, _ in shapes} >= {1, 64}
    assert any((b.item_ids == PAD_ID).all(axis=1).any() for b in batches)
    assert any((b.exclude_ids != PAD_ID).any() for b in batches)
    # Candidates: several widths, PAD fill, OOV and an excluded track among them.
    assert {b.candidate_ids.shape[1] for b in batches} == set(CANDIDATE_WIDTHS)
    candidates = np.concatenate([b.candidate_ids.ravel() for b in batches])
    assert {PAD_ID, OOV_ID} <= set(candidates.tolist())
    assert any(
        np.isin(b.candidate_ids[row], b.exclude_ids[row][b.exclude_ids[row] > 0]).any()
        for b in batches
        for row in range(len(b.candidate_ids))
    )
    graded = synthetic_sessions(60, 8, 50, seed=1, graded=True)
    assert any(code >= FEEDBACK_LEVEL_BASE for s in graded for _, code in s)


def test_compare_values_nan_equals_nan_only() -> None:
    names = ["row 0", "row 1"]
    same = np.array([[0.5, np.nan, NEG], [0.25, 0.75, np.nan]])
    assert compare_values("p", same, same.copy(), PARITY_ATOL, names) == (0.0, [])
    other = same.copy()
    other[1, 1] = np.nan  # a number where torch has NaN
    worst, failures = compare_values(
        "candidate_p_skip", same, other, PARITY_ATOL, names, np.array([[3, 4, 5]] * 2)
    )
    assert worst == np.inf and len(failures) == 1
    assert "candidate_p_skip, row 1, position 1 (item 4)" in failures[0]


def _module(run_dir: Path, top_k: int = 20) -> ServingModule:
    return ServingModule(load_run(run_dir).model, top_k)


def _perturb_item_table(model_path: Path, out_path: Path, delta: float) -> None:
    """Add ``delta`` to one coordinate of one track in the graph's item table (one
    coordinate: the final LayerNorm makes hidden states sum to ~0, so a shift of the
    whole embedding would hardly change any score)."""
    model = onnx.load(str(model_path))
    (table,) = [t for t in model.graph.initializer if "item_table_t" in t.name]
    values = numpy_helper.to_array(table).copy()  # [D, V]
    values[0, 10] += delta
    table.CopyFrom(numpy_helper.from_array(values, table.name))
    onnx.save(model, str(out_path))


def test_check_parity_passes_on_exported_graph(tiny_run_dir, tiny_bundle_dir) -> None:
    spec = EncodingSpec(max_seq_len=8)
    sessions = synthetic_sessions(60, 8, MIN_PARITY_SESSIONS, seed=3)
    report = check_parity(
        _module(tiny_run_dir), tiny_bundle_dir / MODEL_FILE, sessions, spec
    )
    assert report.num_sessions == MIN_PARITY_SESSIONS
    assert report.max_abs_diff <= PARITY_ATOL
    assert report.top10_agreement >= 0.999


def test_check_parity_fails_for_perturbed_graph(
    tiny_run_dir, tiny_bundle_dir, tmp_path
):
    perturbed = tmp_path / "perturbed.onnx"
    _perturb_item_table(tiny_bundle_dir / MODEL_FILE, perturbed, delta=0.5)
    sessions = synthetic_sessions(60, 8, MIN_PARITY_SESSIONS)
    with pytest.raises(ParityValueError) as info:
        check_parity(_module(tiny_run_dir), perturbed, sessions, EncodingSpec(8))
    assert info.value.failures
    message = str(info.value)
    assert "differ by more than atol" in message
    assert "onnx item 10 score" in message
    assert "item_ids [" in message and "position" in message


def test_check_parity_tolerates_change_below_atol(
    tiny_run_dir, tiny_bundle_dir, tmp_path
):
    perturbed = tmp_path / "nudged.onnx"
    _perturb_item_table(tiny_bundle_dir / MODEL_FILE, perturbed, delta=1e-7)
    sessions = synthetic_sessions(60, 8, MIN_PARITY_SESSIONS)
    report = check_parity(_module(tiny_run_dir), perturbed, sessions, EncodingSpec(8))
    assert report.max_abs_diff <= PARITY_ATOL


def test_check_parity_fails_for_renamed_output(tiny_run_dir, tiny_bundle_dir, tmp_path):
    model = onnx.load(str(tiny_bundle_dir / MODEL_FILE))
    for node in model.graph.node:
        node.output[:] = ["scores" if o == OUTPUT_SCORES else o for o in node.output]
        node.input[:] = ["scores" if i == OUTPUT_SCORES else i for i in node.input]
    model.graph.output[1].name = "scores"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(model, str(renamed))
    with pytest.raises(ParityShapeError, match="output names are .*'scores'"):
        check_parity(_module(tiny_run_dir), renamed, [[(5, 1)]], EncodingSpec(8))


def test_check_parity_fails_for_wrong_top_k(tiny_run_dir, tiny_bundle_dir) -> None:
    with pytest.raises(ParityShapeError, match="axis 1 is 20, contract says 10"):
        check_parity(
            _module(tiny_run_dir, top_k=10),
            tiny_bundle_dir / MODEL_FILE,
            [[(5, 1)]],
            EncodingSpec(8),
        )


def _perturb_skip_bias(model_path: Path, out_path: Path, delta: float) -> None:
    """Shift one track's skip propensity r_c in the graph (its skip head bias: the
    head's [V, 1] table with beta = 0, the wrapper's [V] ``skip_bias`` otherwise)."""
    model = onnx.load(str(model_path))
    names = ("encoder.skip_head.bias_emb.weight", "skip_bias")
    (table,) = [t for t in model.graph.initializer if t.name in names]
    values = numpy_helper.to_array(table).copy()
    values[10] += delta
    table.CopyFrom(numpy_helper.from_array(values, table.name))
    onnx.save(model, str(out_path))


@pytest.mark.parametrize("skip_weight", [0.0, 0.5])
def test_check_parity_catches_a_wrong_skip_head(
    make_run, make_bundle, tmp_path, skip_weight
):
    overrides = {"skip_head": True, "skip_weight": skip_weight}
    module = _module(make_run(**overrides))
    graph = make_bundle(**overrides) / MODEL_FILE
    sessions = synthetic_sessions(60, 8, 200, seed=4)
    assert check_parity(module, graph, sessions, EncodingSpec(8)).max_abs_diff <= (
        PARITY_ATOL
    )
    perturbed = tmp_path / "skip.onnx"
    _perturb_skip_bias(graph, perturbed, delta=2.0)
    with pytest.raises(ParityValueError) as info:
        check_parity(module, perturbed, sessions, EncodingSpec(8))
    message = str(info.value)
    assert "candidate_p_skip" in message and "(item 10)" in message
    # beta != 0: p_skip moves the ranking scores of item 10 too.
    assert ("onnx item 10 score" in message) == bool(skip_weight)
