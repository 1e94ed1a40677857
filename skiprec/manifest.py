"""The bundle manifest: the one contract between training/export and serving.

A bundle directory holds ``manifest.json`` plus the files it lists (``model.onnx``,
``vocab.json``, ``popularity.json``). The exporter writes it; the service validates it
(schema version, sha256 of each file, ONNX signature) before a single request is served.
Torch-free.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from skiprec.encoding import EncodingSpec

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
VOCAB_FILE = "vocab.json"
POPULARITY_FILE = "popularity.json"

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
# The ranking score of a track is log p(next = track) (+ the transition prior when the
# model has one) + skip_weight * log(1 - p_skip); PAD candidates score -inf.


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

    def encoding_spec(self) -> EncodingSpec:
        return EncodingSpec(
            max_seq_len=self.max_seq_len,
            append_mask=self.append_mask,
            truncation=self.truncation,
            padding=self.padding,
            feedback_codes=self.feedback_codes,
        )
