"""The bundle manifest: the one contract between training/export and serving.

A bundle directory holds ``manifest.json`` plus the files it lists (``model.onnx``,
``vocab.json``, ``popularity.json`` and, in a bundle built for two-stage retrieval,
``query.onnx``, ``candidates.onnx`` and ``tracks.index``). The exporter writes it; the
service validates it (schema version, sha256 of each file, ONNX signature) before a
single request is served.
Torch-free.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skiprec.encoding import EncodingSpec
from skiprec.policy import Rule, SessionPolicy

# 2: candidate scoring and p_skip (candidate_ids in; top_p_skip, candidate_scores,
# candidate_p_skip out; skip_head, skip_weight). Version-1 bundles are refused.
SCHEMA_VERSION = 2
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
VOCAB_FILE = "vocab.json"
POPULARITY_FILE = "popularity.json"
# Two-stage retrieval (optional): session -> query vector, ANN index, exact candidates.
QUERY_MODEL_FILE = "query.onnx"
CANDIDATES_MODEL_FILE = "candidates.onnx"
INDEX_FILE = "tracks.index"
RETRIEVAL_FILES = (QUERY_MODEL_FILE, CANDIDATES_MODEL_FILE, INDEX_FILE)

# Graph I/O names, fixed for every bundle of this schema version.
INPUT_ITEM_IDS = "item_ids"  # int64 [batch_size, sequence_length]
INPUT_FEEDBACK = "feedback"  # int64 [batch_size, sequence_length]
INPUT_EXCLUDE = "exclude_ids"  # int64 [batch_size, num_excluded]; PAD-filled
INPUT_CANDIDATES = "candidate_ids"  # int64 [batch_size, num_candidates]; PAD-filled
OUTPUT_INDICES = "top_indices"  # int64 [batch_size, top_k]
OUTPUT_SCORES = "top_scores"  # float32 [batch_size, top_k]
OUTPUT_P_SKIP = "top_p_skip"  # float32 [batch_size, top_k]; NaN without a skip head
OUTPUT_CANDIDATE_SCORES = "candidate_scores"  # float32 [batch_size, num_candidates]
OUTPUT_CANDIDATE_P_SKIP = "candidate_p_skip"  # float32 [batch_size, num_candidates]
# The retrieval graphs' own names (the others are shared with model.onnx).
OUTPUT_QUERY = "query"  # float32 [batch_size, hidden_dim]: the last hidden state
OUTPUT_PRIOR_CANDIDATES = "prior_candidates"  # int64 [batch_size, num_successors]
INPUT_QUERY = OUTPUT_QUERY
# The ranking score of a track is log p(next = track) (+ the transition prior when the
# model has one) + skip_weight * log(1 - p_skip); PAD candidates score -inf.
INPUT_NAMES = (INPUT_ITEM_IDS, INPUT_FEEDBACK, INPUT_EXCLUDE, INPUT_CANDIDATES)
OUTPUT_NAMES = (
    OUTPUT_INDICES,
    OUTPUT_SCORES,
    OUTPUT_P_SKIP,
    OUTPUT_CANDIDATE_SCORES,
    OUTPUT_CANDIDATE_P_SKIP,
)
QUERY_INPUT_NAMES = (INPUT_ITEM_IDS, INPUT_FEEDBACK)
QUERY_OUTPUT_NAMES = (OUTPUT_QUERY, OUTPUT_PRIOR_CANDIDATES)
CANDIDATES_INPUT_NAMES = (
    INPUT_QUERY,
    INPUT_ITEM_IDS,
    INPUT_FEEDBACK,
    INPUT_EXCLUDE,
    INPUT_CANDIDATES,
)
CANDIDATES_OUTPUT_NAMES = (OUTPUT_CANDIDATE_SCORES, OUTPUT_CANDIDATE_P_SKIP)


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dtype: Literal["int64", "float32", "float16"]
    shape: list[int | str]


class ParityReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    atol: float
    num_sessions: int
    max_abs_diff: float
    top10_agreement: float


def _check_names(kind: str, specs: list[TensorSpec], names: tuple[str, ...]) -> None:
    got = tuple(spec.name for spec in specs)
    if got != names:
        raise ValueError(f"{kind} must be named {list(names)}, got {list(got)}")


class RetrievalRecall(BaseModel):
    """Two-stage top-k against exact scoring of the whole catalogue, measured at
    export on the parity sessions (share of the exact top-k the ANN path returns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_sessions: int
    recall_at_10: float
    recall_at_100: float


# The ANN index's vector precision: f16 halves the memory a search walks, which is
# its cost at a million tracks (docs/BENCHMARKS.md, "Where the 1M time goes"), with
# the same recall after exact re-scoring, so new indexes use it ("An f16 index by
# default"). i8 halves it again and searches on integer dot products: the tracks'
# rows are stored over each dimension's largest magnitude (``RetrievalSpec.scales``)
# and each query is multiplied by it and quantised on its own scale
# (skiprec.retrieval.to_int8), which leaves every inner-product ranking as it was
# but for rounding ("An i8 index"). A manifest without the field is f32: every
# index built before there was a choice.
VectorDtype = Literal["f32", "f16", "i8"]
VECTOR_DTYPES: tuple[VectorDtype, ...] = get_args(VectorDtype)
DEFAULT_VECTOR_DTYPE: VectorDtype = "f16"


class SearchDepth(BaseModel):
    """A shallower ANN search for batches whose requests rank few tracks: an HNSW
    search costs what its expansion visits, and the API's default k is 10 of the
    up to ``num_candidates`` hits the full depth finds. The export keeps one only
    when its recall at ``max_width`` matches the full depth's on the parity
    sessions (``model_export.retrieval.choose_depths``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_width: int = Field(
        ge=1, description="batches that rank at most this many tracks a request"
    )
    num_candidates: int = Field(ge=1, description="ANN hits per session")
    expansion_search: int = Field(ge=1, description="the index's search depth")
    recall: float = Field(
        ge=0.0, le=1.0, description="two-stage recall@max_width, parity sessions"
    )


class RetrievalSpec(BaseModel):
    """How the bundle's two-stage path is built: the ANN index over the tracks'
    embeddings (keys = vocabulary indices) and the two graphs around it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    library: Literal["usearch"]
    library_version: str
    metric: Literal["ip"]
    connectivity: int = Field(ge=2)
    expansion_add: int = Field(ge=1)
    expansion_search: int = Field(ge=1)
    vectors: VectorDtype = Field(
        default="f32", description="the index's vector precision"
    )
    scales: tuple[float, ...] = Field(
        default=(),
        description="an i8 index only: each dimension's largest magnitude over the "
        "tracks, which the index's rows are divided by and a query is multiplied by",
    )
    num_candidates: int = Field(ge=1, description="C: ANN hits per session")
    min_tracks: int = Field(
        ge=0, description="the export threshold: an index is built from this size"
    )
    query_inputs: list[TensorSpec]
    query_outputs: list[TensorSpec]
    candidates_inputs: list[TensorSpec]
    candidates_outputs: list[TensorSpec]
    recall: RetrievalRecall
    depths: tuple[SearchDepth, ...] = Field(
        default=(),
        description="shallower searches by width, narrowest first; a manifest "
        "without them searches every batch at the full depth",
    )

    @model_validator(mode="after")
    def _depths_shallower(self) -> RetrievalSpec:
        widths = [depth.max_width for depth in self.depths]
        if widths != sorted(set(widths)):
            raise ValueError(f"depths must widen strictly, got max_width {widths}")
        for depth in self.depths:
            if depth.num_candidates > self.num_candidates:
                raise ValueError(
                    f"a depth for width {depth.max_width} retrieves "
                    f"{depth.num_candidates} candidates, more than the full "
                    f"depth's {self.num_candidates}"
                )
        return self

    @model_validator(mode="after")
    def _scales_with_i8(self) -> RetrievalSpec:
        if (self.vectors == "i8") != bool(self.scales):
            raise ValueError(
                "scales belong to an i8 index, and an i8 index needs them: "
                f"vectors {self.vectors!r} with {len(self.scales)} scales"
            )
        return self

    def depth(self, width: int | None) -> tuple[int, int]:
        """(ANN hits, search expansion) for a batch whose requests rank at most
        ``width`` tracks each (``None``: any number, the full depth)."""
        if width is not None:
            for depth in self.depths:
                if width <= depth.max_width:
                    return depth.num_candidates, depth.expansion_search
        return self.num_candidates, self.expansion_search

    def served_recall_at_10(self) -> float | None:
        """The export's recall@10 of the search a batch of k=10 requests gets (its
        depth's, or the full depth's); ``None`` when that depth was measured at
        another width."""
        for depth in self.depths:
            if depth.max_width >= 10:
                return depth.recall if depth.max_width == 10 else None
        return self.recall.recall_at_10

    @model_validator(mode="after")
    def _graph_names(self) -> RetrievalSpec:
        _check_names("query_inputs", self.query_inputs, QUERY_INPUT_NAMES)
        _check_names("query_outputs", self.query_outputs, QUERY_OUTPUT_NAMES)
        _check_names(
            "candidates_inputs", self.candidates_inputs, CANDIDATES_INPUT_NAMES
        )
        _check_names(
            "candidates_outputs", self.candidates_outputs, CANDIDATES_OUTPUT_NAMES
        )
        return self


class PolicySpec(BaseModel):
    """The session policy (``skiprec.policy``) chosen on the run's validation split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skipped: Rule
    played: Rule
    skipped_penalty: float = Field(ge=0.0, allow_inf_nan=False)
    played_penalty: float = Field(ge=0.0, allow_inf_nan=False)

    def session_policy(self) -> SessionPolicy:
        return SessionPolicy(
            self.skipped, self.played, self.skipped_penalty, self.played_penalty
        )


class Manifest(BaseModel):
    """Everything serving needs to encode a session and trust the graph."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: int
    model_version: str
    created_at: datetime
    backbone: Literal["sasrec", "bert4rec"]
    model_config_: dict[str, Any] = Field(alias="model_config")
    train_config: dict[str, Any] = Field(default_factory=dict)
    max_seq_len: int = Field(ge=1)
    truncation: Literal["left"] = "left"
    padding: Literal["left"] = "left"
    append_mask: bool
    feedback_codes: dict[str, int]
    special_ids: dict[str, int]
    num_items: int = Field(ge=1, description="V: item table rows, specials included")
    top_k: int = Field(ge=1, description="K: ranked items the graph returns per row")
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: dict[str, str] = Field(description="file name -> sha256 hex digest")
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str
    parity: ParityReport
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    skip_head: bool = Field(
        default=False, description="the p_skip outputs are a model's (else NaN)"
    )
    skip_weight: float = Field(
        default=0.0, description="beta of + beta * log(1 - p_skip) in the scores"
    )
    policy: PolicySpec | None = Field(
        default=None,
        description="the serving policy the run chose on validation; None: none "
        "recorded (the service then applies skiprec.policy.SessionPolicy())",
    )
    retrieval: RetrievalSpec | None = Field(
        default=None,
        description="the two-stage path (ANN candidates, exact scoring); None: the "
        "service scores the whole catalogue with model.onnx",
    )

    @model_validator(mode="after")
    def _schema_2_contract(self) -> Manifest:
        """The graph I/O of this schema version, and a skip weight only with a head."""
        _check_names("inputs", self.inputs, INPUT_NAMES)
        _check_names("outputs", self.outputs, OUTPUT_NAMES)
        if not math.isfinite(self.skip_weight):
            raise ValueError(f"skip_weight must be finite, got {self.skip_weight}")
        if self.skip_weight and not self.skip_head:
            raise ValueError("skip_weight is not 0 but the model has no skip head")
        return self

    def encoding_spec(self) -> EncodingSpec:
        return EncodingSpec(
            max_seq_len=self.max_seq_len,
            append_mask=self.append_mask,
            truncation=self.truncation,
            padding=self.padding,
            feedback_codes=self.feedback_codes,
        )
