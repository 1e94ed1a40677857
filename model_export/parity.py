"""Parity between the exported ONNX graph (ONNX Runtime) and torch ``ServingModule``.

Run as part of every export (``model_export/export.py``); a failure fails the export.
Order of checks, as in optimum's ``validate_model_outputs``: input/output names, then
output shapes and dtypes, then values. Every failure is collected before raising, so a
broken export names all its mismatches at once.

Values: for each session the K returned scores must match torch within ``PARITY_ATOL``
(both the scores of the items ONNX returned, and the sorted best-K scores), and the
top-10 lists must be identical for at least ``MIN_TOP10_AGREEMENT`` of the sessions;
two different items at the same position are a tie, not a mismatch, when torch scores
them within the tolerance. ``top_p_skip`` must match torch's p_skip of the items ONNX
returned, and ``candidate_scores`` / ``candidate_p_skip`` torch's values of the
candidates, all within the same tolerance (equal infinities and NaN = NaN agree).

The (B, T) grid cycles through batch sizes and sequence lengths including T=1,
T=max_seq_len and the batch's natural length, and includes all-padding rows, rows
with exclusions, and candidate lists of several widths with PAD fill, OOV and
excluded tracks among them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model_export.wrapper import ServingModule
from skiprec.bundle import session_options, signature_problems
from skiprec.encoding import (
    FEEDBACK_LEVEL_BASE,
    FEEDBACK_PAD,
    FEEDBACK_PLAY,
    FEEDBACK_SKIP,
    EncodingSpec,
    Session,
    encode_exclusions,
    encode_sessions,
    is_skip_code,
)
from skiprec.events import SKIP_LEVELS
from skiprec.manifest import (
    INPUT_CANDIDATES,
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    OUTPUT_CANDIDATE_P_SKIP,
    OUTPUT_CANDIDATE_SCORES,
    OUTPUT_INDICES,
    OUTPUT_NAMES,
    OUTPUT_P_SKIP,
    OUTPUT_SCORES,
    ParityReport,
    TensorSpec,
)
from skiprec.vocab import NUM_SPECIAL, OOV_ID, PAD_ID

logger = logging.getLogger(__name__)

PARITY_ATOL = 1e-4  # fp32; stored in the manifest's parity report
MIN_TOP10_AGREEMENT = 0.999
MIN_PARITY_SESSIONS = 1000
TOP_N = 10
BATCH_SIZES = (1, 4, 16, 64)
CANDIDATE_WIDTHS = (1, 7, 30)  # N per batch, cycled
MAX_LISTED_FAILURES = 50


class ParityError(Exception):
    """ONNX Runtime and torch disagree; ``failures`` lists every mismatch found."""

    def __init__(self, summary: str, failures: Sequence[str]) -> None:
        self.failures = list(failures)
        listed = self.failures[:MAX_LISTED_FAILURES]
        more = len(self.failures) - len(listed)
        lines = [summary, *(f"  - {failure}" for failure in listed)]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


class ParityShapeError(ParityError):
    """Input/output names, output shapes or dtypes differ."""


class ParityValueError(ParityError):
    """A score differs from torch by more than the tolerance."""


class ParityTopKError(ParityError):
    """Too many sessions have a different top-10 list."""


@dataclass
class Comparison:
    """The outcome of comparing one batch; failures name (row, position, values)."""

    max_abs_diff: float = 0.0
    value_failures: list[str] = field(default_factory=list)
    topk_mismatch_rows: list[int] = field(default_factory=list)
    topk_failures: list[str] = field(default_factory=list)


def _abs_diff(a: np.ndarray, b: np.ndarray, nan_equal: bool = False) -> np.ndarray:
    """|a - b| where equal infinities count as 0 and NaN as +inf (0 for NaN vs NaN
    when ``nan_equal``: the p_skip outputs are NaN by definition in places)."""
    with np.errstate(invalid="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a.astype(np.float64) - b))
    if nan_equal:
        diff = np.where(np.isnan(a) & np.isnan(b), 0.0, diff)
    return np.where(np.isnan(diff), np.inf, diff)


def compare_values(
    name: str,
    onnx_values: np.ndarray,
    reference: np.ndarray,
    atol: float,
    row_names: Sequence[str],
    columns: np.ndarray | None = None,
) -> tuple[float, list[str]]:
    """Element-wise comparison of one output [B, M] with torch's; NaN = NaN.

    Returns the largest difference and one failure per row that differs by more
    than ``atol``, naming the output, the row, the position (and the item id there,
    from ``columns`` [B, M], when given) and both values.
    """
    diff = _abs_diff(onnx_values, reference, nan_equal=True)  # [B, M]
    failures = []
    for b in np.flatnonzero((diff > atol).any(axis=1)).tolist():
        k = int(np.argmax(diff[b]))
        item = f" (item {columns[b, k]})" if columns is not None else ""
        failures.append(
            f"{name}, {row_names[b]}, position {k}{item}: onnx "
            f"{onnx_values[b, k]:.7g}, torch {reference[b, k]:.7g} "
            f"(|diff| {diff[b, k]:.3g} > atol {atol:g})"
        )
    return float(diff.max(initial=0.0)), failures


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row [B, k], best first; among equal scores the
    lower index first, as ONNX Runtime's TopK. Partition first: a full sort of a large
    catalogue per row would dominate the parity run."""
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [B, k] unordered
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=1)  # by -value, then by index
    return np.take_along_axis(candidates, order, axis=1)


def compare_outputs(
    onnx_indices: np.ndarray,
    onnx_scores: np.ndarray,
    reference_logits: np.ndarray,
    atol: float = PARITY_ATOL,
    top_n: int = TOP_N,
    row_names: Sequence[str] | None = None,
) -> Comparison:
    """Compare the graph's top-K with the torch reference scores.

    Args:
        onnx_indices: int64 [B, K] item indices returned by ONNX Runtime, best first.
        onnx_scores: float [B, K] their scores.
        reference_logits: float [B, V] torch's masked scores of every item.
        row_names: how failures name each row (default ``row <b>``).
    """
    B, K = onnx_indices.shape
    names = row_names if row_names is not None else [f"row {b}" for b in range(B)]
    out = Comparison()
    reference_order = _top_k(reference_logits, K)
    reference_top = np.take_along_axis(reference_logits, reference_order, axis=1)
    at_onnx_items = np.take_along_axis(reference_logits, onnx_indices, axis=1)
    diff = np.maximum(
        _abs_diff(onnx_scores, at_onnx_items), _abs_diff(onnx_scores, reference_top)
    )  # [B, K]
    out.max_abs_diff = float(diff.max(initial=0.0))
    for b in np.flatnonzero((diff > atol).any(axis=1)).tolist():
        k = int(np.argmax(diff[b]))
        out.value_failures.append(
            f"{names[b]}, position {k}: onnx item {onnx_indices[b, k]} score "
            f"{onnx_scores[b, k]:.7g}; torch scores it {at_onnx_items[b, k]:.7g} "
            f"and its #{k} item {reference_order[b, k]} {reference_top[b, k]:.7g} "
            f"(|diff| {diff[b, k]:.3g} > atol {atol:g})"
        )
    n = min(top_n, K)
    for b in range(B):
        for k in range(n):
            ours, theirs = int(onnx_indices[b, k]), int(reference_order[b, k])
            if ours == theirs:
                continue
            gap = _abs_diff(
                reference_logits[b, ours : ours + 1],
                reference_logits[b, theirs : theirs + 1],
            )[0]
            if gap > atol:  # not a tie: a different item
                out.topk_mismatch_rows.append(b)
                out.topk_failures.append(
                    f"{names[b]}, top-{n} position {k}: onnx item {ours} vs torch "
                    f"item {theirs} (torch scores {reference_logits[b, ours]:.7g} vs "
                    f"{reference_logits[b, theirs]:.7g})"
                )
                break
    return out


def synthetic_sessions(
    num_items: int,
    max_seq_len: int,
    num_sessions: int,
    seed: int = 0,
    graded: bool = False,
) -> list[list[tuple[int, int]]]:
    """Seeded random sessions: lengths 0..max_seq_len+3 (empty and over-long
    included), real tracks with an occasional OOV, random play/skip; ``graded``: a
    random skip level instead for about half of the events (a graded model sees
    both kinds of code)."""
    rng = np.random.default_rng(seed)
    sessions = []
    for _ in range(num_sessions):
        length = int(rng.integers(0, max_seq_len + 4))
        items = rng.integers(NUM_SPECIAL, num_items, size=length)
        items[rng.random(length) < 0.05] = OOV_ID
        codes = np.where(rng.random(length) < 0.4, FEEDBACK_SKIP, FEEDBACK_PLAY)
        if graded:
            levels = FEEDBACK_LEVEL_BASE + rng.integers(0, len(SKIP_LEVELS), length)
            codes = np.where(rng.random(length) < 0.5, levels, codes)
        sessions.append(list(zip(items.tolist(), codes.tolist(), strict=True)))
    return sessions


@dataclass(frozen=True)
class ParityBatch:
    item_ids: np.ndarray  # int64 [B, T]
    feedback: np.ndarray  # int64 [B, T]
    exclude_ids: np.ndarray  # int64 [B, E]
    candidate_ids: np.ndarray  # int64 [B, N]
    first_session: int  # index of row 0 in the session list

    def feeds(self) -> dict[str, np.ndarray]:
        """The graph's inputs by name."""
        return {
            INPUT_ITEM_IDS: self.item_ids,
            INPUT_FEEDBACK: self.feedback,
            INPUT_EXCLUDE: self.exclude_ids,
            INPUT_CANDIDATES: self.candidate_ids,
        }


def parity_batches(
    sessions: Sequence[Session], spec: EncodingSpec, num_items: int, seed: int = 0
) -> list[ParityBatch]:
    """Split sessions into batches over the (B, T) grid (see the module docstring).

    Odd rows exclude the session's skipped tracks (the service's policy) plus a few
    random ones; the first row of every third batch is replaced by all padding.
    Candidates: per row up to N random tracks, PAD-filled, with an OOV in every
    third row and, in excluding rows, one of the excluded tracks.
    """
    rng = np.random.default_rng(seed)
    lengths = cycle([1, spec.max_seq_len, None, max(1, spec.max_seq_len // 2)])
    sizes = cycle(BATCH_SIZES)
    widths = cycle(CANDIDATE_WIDTHS)
    batches: list[ParityBatch] = []
    start = 0
    while start < len(sessions):
        chunk = sessions[start : start + next(sizes)]
        item_ids, feedback = encode_sessions(chunk, spec, seq_len=next(lengths))
        width = next(widths)
        excluded: list[list[int]] = []
        candidates = np.full((len(chunk), width), PAD_ID, dtype=np.int64)
        for row, events in enumerate(chunk):
            if row % 2:
                skipped = [item for item, code in events if is_skip_code(code)]
                extra = rng.integers(NUM_SPECIAL, num_items, size=3).tolist()
                excluded.append(skipped + extra)
            else:
                excluded.append([])
            count = int(rng.integers(0, width + 1))
            picked = rng.integers(NUM_SPECIAL, num_items, size=count)
            if count and row % 3 == 0:
                picked[0] = OOV_ID
            if count > 1 and excluded[-1]:
                picked[-1] = excluded[-1][-1]
            candidates[row, :count] = picked
        if len(batches) % 3 == 0:
            item_ids[0] = PAD_ID
            feedback[0] = FEEDBACK_PAD
        batches.append(
            ParityBatch(
                item_ids, feedback, encode_exclusions(excluded), candidates, start
            )
        )
        start += len(chunk)
    return batches


def expected_signature(top_k: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph I/O every bundle declares (skiprec.manifest names)."""
    sequence: list[int | str] = ["batch_size", "sequence_length"]
    inputs = [
        TensorSpec(name=INPUT_ITEM_IDS, dtype="int64", shape=sequence),
        TensorSpec(name=INPUT_FEEDBACK, dtype="int64", shape=sequence),
        TensorSpec(
            name=INPUT_EXCLUDE, dtype="int64", shape=["batch_size", "num_excluded"]
        ),
        TensorSpec(
            name=INPUT_CANDIDATES,
            dtype="int64",
            shape=["batch_size", "num_candidates"],
        ),
    ]
    top: list[int | str] = ["batch_size", top_k]
    candidates: list[int | str] = ["batch_size", "num_candidates"]
    outputs = [
        TensorSpec(name=OUTPUT_INDICES, dtype="int64", shape=top),
        TensorSpec(name=OUTPUT_SCORES, dtype="float32", shape=top),
        TensorSpec(name=OUTPUT_P_SKIP, dtype="float32", shape=top),
        TensorSpec(name=OUTPUT_CANDIDATE_SCORES, dtype="float32", shape=candidates),
        TensorSpec(name=OUTPUT_CANDIDATE_P_SKIP, dtype="float32", shape=candidates),
    ]
    return inputs, outputs


def check_parity(
    module: ServingModule,
    model_path: Path,
    sessions: Sequence[Session],
    spec: EncodingSpec,
    atol: float = PARITY_ATOL,
    seed: int = 0,
) -> ParityReport:
    """Run every session through torch and ONNX Runtime; raise on any disagreement.

    Raises:
        ParityShapeError, ParityValueError, ParityTopKError (all ``ParityError``).
    """
    session = ort.InferenceSession(
        str(model_path),
        sess_options=session_options(),
        providers=["CPUExecutionProvider"],
    )
    inputs, outputs = expected_signature(module.top_k)
    names = signature_problems(session.get_inputs(), inputs, "input", "contract")
    names += signature_problems(session.get_outputs(), outputs, "output", "contract")
    if names:
        raise ParityShapeError("ONNX graph signature differs from the contract", names)

    num_items = module.encoder.config.num_items
    shape_failures: list[str] = []
    value_failures: list[str] = []
    topk_failures: list[str] = []
    mismatched_sessions = 0
    max_abs_diff = 0.0
    for batch in parity_batches(sessions, spec, num_items, seed):
        B, T = batch.item_ids.shape
        N = batch.candidate_ids.shape[1]
        results = session.run(list(OUTPUT_NAMES), batch.feeds())
        onnx = dict(zip(OUTPUT_NAMES, results, strict=True))
        with torch.inference_mode():
            reference = module.reference(
                *(torch.from_numpy(array) for array in batch.feeds().values())
            )
        logits, p_skip_all, candidate_scores, candidate_p_skip = (
            tensor.numpy() for tensor in reference
        )
        rows = [
            f"session {batch.first_session + b} (B={B}, T={T}, row {b}, "
            f"item_ids {batch.item_ids[b].tolist()}, "
            f"exclude_ids {batch.exclude_ids[b].tolist()}, "
            f"candidate_ids {batch.candidate_ids[b].tolist()})"
            for b in range(B)
        ]
        expected_shapes = {
            OUTPUT_INDICES: (np.int64, (B, module.top_k)),
            OUTPUT_SCORES: (np.float32, (B, module.top_k)),
            OUTPUT_P_SKIP: (np.float32, (B, module.top_k)),
            OUTPUT_CANDIDATE_SCORES: (np.float32, (B, N)),
            OUTPUT_CANDIDATE_P_SKIP: (np.float32, (B, N)),
        }
        problems = [
            f"batch B={B} T={T} N={N}: {name} is {onnx[name].dtype}"
            f"{list(onnx[name].shape)}, expected {np.dtype(dtype)}{list(shape)}"
            for name, (dtype, shape) in expected_shapes.items()
            if onnx[name].dtype != dtype or onnx[name].shape != shape
        ]
        if problems:
            shape_failures += problems
            continue
        onnx_indices = onnx[OUTPUT_INDICES]
        comparison = compare_outputs(
            onnx_indices, onnx[OUTPUT_SCORES], logits, atol, TOP_N, rows
        )
        max_abs_diff = max(max_abs_diff, comparison.max_abs_diff)
        value_failures += comparison.value_failures
        topk_failures += comparison.topk_failures
        mismatched_sessions += len(comparison.topk_mismatch_rows)
        # p_skip of the items ONNX returned (NaN where their score is -inf).
        top_p_skip = np.take_along_axis(p_skip_all, onnx_indices, axis=1)
        top_p_skip[np.isneginf(onnx[OUTPUT_SCORES])] = np.nan
        for name, expected, columns in (
            (OUTPUT_P_SKIP, top_p_skip, onnx_indices),
            (OUTPUT_CANDIDATE_SCORES, candidate_scores, batch.candidate_ids),
            (OUTPUT_CANDIDATE_P_SKIP, candidate_p_skip, batch.candidate_ids),
        ):
            worst, failures = compare_values(
                name, onnx[name], expected, atol, rows, columns
            )
            max_abs_diff = max(max_abs_diff, worst)
            value_failures += failures

    agreement = 1.0 - mismatched_sessions / max(1, len(sessions))
    if shape_failures:
        raise ParityShapeError("ONNX output shapes/dtypes differ", shape_failures)
    if value_failures:
        raise ParityValueError(
            f"{len(value_failures)} output rows over {len(sessions)} sessions differ "
            f"by more than atol {atol:g} (max |diff| {max_abs_diff:.3g})",
            value_failures + topk_failures,
        )
    if agreement < MIN_TOP10_AGREEMENT:
        raise ParityTopKError(
            f"top-{TOP_N} lists agree for {agreement:.4%} of {len(sessions)} sessions, "
            f"below {MIN_TOP10_AGREEMENT:.1%}",
            topk_failures,
        )
    report = ParityReport(
        atol=atol,
        num_sessions=len(sessions),
        max_abs_diff=max_abs_diff,
        top10_agreement=agreement,
    )
    logger.info(
        "parity ok: %d sessions, max |diff| %.3g, top-%d agreement %.4f",
        report.num_sessions,
        report.max_abs_diff,
        TOP_N,
        report.top10_agreement,
    )
    return report
