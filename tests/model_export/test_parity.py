"""Parity: the comparison rules on hand-made arrays, then real and perturbed graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from model_export.parity import (
    MIN_PARITY_SESSIONS,
    PARITY_ATOL,
    ParityShapeError,
    ParityValueError,
    check_parity,
    compare_outputs,
    parity_batches,
    synthetic_sessions,
)
from model_export.wrapper import ServingModule
from skiprec.encoding import EncodingSpec
from skiprec.manifest import MODEL_FILE, OUTPUT_SCORES
from skiprec.vocab import PAD_ID
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
    assert "sessions differ by more than atol" in message
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
