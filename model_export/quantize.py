"""Optional int8 variant: dynamic quantisation of the catalogue-scoring MatMul only.

Serving one session on a large catalogue is dominated by ``last_hidden @
item_table_t`` ([1, D] @ [D, V]): the whole fp32 table (V x D x 4 bytes) is read from
memory on every call. Quantising that one MatMul's weights to int8 (per item column)
cuts the bytes read by 4x; the transformer stays fp32. ONNX Runtime's
``quantize_dynamic`` rewrites it as DynamicQuantizeLinear + MatMulInteger, outputs
unchanged in name and dtype. The latency gain and the top-10 overlap with fp32 are
measured in docs/RESULTS.md; the drift on a trained model is measured at export and
recorded in the manifest.

fp16 is not offered: a Cast of an fp16 table is constant-folded back to fp32 when the
session is created, so it would only halve the file, not the latency.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from model_export.parity import TOP_N, ParityTopKError, parity_batches
from skiprec.bundle import session_options
from skiprec.encoding import EncodingSpec, Session
from skiprec.manifest import OUTPUT_INDICES, OUTPUT_SCORES

ITEM_TABLE = "item_table_t"  # the ServingModule buffer, kept as an initializer name
MIN_INT8_TOP10_OVERLAP = 0.9


@dataclass(frozen=True)
class PrecisionDrift:
    """How far a reduced-precision graph ranks from the fp32 graph it came from."""

    reference: str
    num_sessions: int
    top10_overlap: float  # mean |top-10 int8 & top-10 fp32| / 10
    identical_top10: float  # fraction of sessions with the identical top-10 list
    max_abs_diff: float  # over the top-10 scores

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def quantize_item_table(src: Path, dst: Path) -> None:
    """Write ``dst``: ``src`` with the item-table MatMul(s) quantised to int8 (the
    next-track scores, and the skip head's all-item scores when its ranking weight is
    not 0)."""
    model = onnx.load(str(src))
    nodes = [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and ITEM_TABLE in node.input
    ]
    if not 1 <= len(nodes) <= 2:
        raise ValueError(
            f"{src}: expected one or two MatMuls reading {ITEM_TABLE}, got {nodes}"
        )
    # quantize_dynamic warns on the root logger that shape pre-processing may help;
    # it only matters for convolutional graphs.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            per_channel=True,  # one scale per item column: rare tracks keep precision
        )
    finally:
        root.setLevel(level)
    onnx.checker.check_model(str(dst), full_check=True)


def measure_drift(
    reference_path: Path,
    quantized_path: Path,
    sessions: Sequence[Session],
    spec: EncodingSpec,
    num_items: int,
    min_top10_overlap: float = MIN_INT8_TOP10_OVERLAP,
) -> PrecisionDrift:
    """Compare the quantised graph with its fp32 reference on the parity sessions.

    Raises:
        ParityTopKError: mean top-10 overlap below ``min_top10_overlap``.
    """
    options = session_options()
    reference, quantized = (
        ort.InferenceSession(
            str(p), sess_options=options, providers=["CPUExecutionProvider"]
        )
        for p in (reference_path, quantized_path)
    )
    overlaps: list[float] = []
    identical = 0
    max_abs_diff = 0.0
    for batch in parity_batches(sessions, spec, num_items):
        feeds = batch.feeds()
        outputs = [OUTPUT_INDICES, OUTPUT_SCORES]
        ref_indices, ref_scores = reference.run(outputs, feeds)
        q_indices, q_scores = quantized.run(outputs, feeds)
        n = min(TOP_N, ref_indices.shape[1])
        finite = np.isfinite(ref_scores[:, :n]) & np.isfinite(q_scores[:, :n])
        diff = np.abs(ref_scores[:, :n] - q_scores[:, :n])[finite]
        max_abs_diff = max(max_abs_diff, float(diff.max(initial=0.0)))
        for ours, theirs in zip(q_indices[:, :n], ref_indices[:, :n], strict=True):
            overlaps.append(len(set(ours.tolist()) & set(theirs.tolist())) / n)
            identical += bool((ours == theirs).all())
    drift = PrecisionDrift(
        reference="fp32 graph",
        num_sessions=len(overlaps),
        top10_overlap=float(np.mean(overlaps)) if overlaps else 1.0,
        identical_top10=identical / max(1, len(overlaps)),
        max_abs_diff=max_abs_diff,
    )
    if drift.top10_overlap < min_top10_overlap:
        raise ParityTopKError(
            f"int8 graph keeps {drift.top10_overlap:.1%} of the fp32 top-{TOP_N} "
            f"(minimum {min_top10_overlap:.0%}); export fp32 instead",
            [str(drift.to_dict())],
        )
    return drift
