"""The benchmark's experiment grid: named variants of the production preset.

Each ``Variant`` is a set of ``TrainConfig`` overrides applied on top of ``BASE`` (the
papers' setting: plain SASRec, next-track cross-entropy, no skip signal), so a row of
docs/RESULTS.md differs from the ``sasrec`` row in exactly the fields it names. The
baselines, the lambda sweep of the skip contrastive term, the leave-one-out rows and
the ML-1M backbone check are listed here too; ``training.experiments`` runs them and
``training.report`` lays out their tables in this order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from training.baselines import BASELINES
from training.config import TrainConfig

BASELINE_NAMES = BASELINES
LAMBDAS = (0.1, 0.25, 0.5, 0.75, 1.0)
PAPER_LAMBDA = 0.5


@dataclass(frozen=True)
class Variant:
    """A row of the tables: its name, its config overrides and a one-line summary."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


# The ablation base is the paper's setting: plain SASRec, next-track CE, no skip signal.
BASE = {"feedback_input": False, "target": "next", "skip_cl_weight": 0.0}
VARIANTS: tuple[Variant, ...] = (
    Variant("sasrec", {}, "SASRec, next-track cross-entropy"),
    Variant(
        "sasrec+skip_cl",
        {"skip_cl_weight": PAPER_LAMBDA},
        "+ skip contrastive term (papers' semantics, lambda 0.5, tau 0.1)",
    ),
    Variant(
        "sasrec+skip_cl_compat",
        {"skip_cl_weight": PAPER_LAMBDA, "skip_cl_compat": True},
        "+ skip contrastive, authors'-code compat (other session's skips, padding)",
    ),
    Variant(
        "sasrec+skip_input", {"feedback_input": True}, "+ play/skip input embedding"
    ),
    Variant(
        "sasrec+both",
        {"feedback_input": True, "skip_cl_weight": PAPER_LAMBDA},
        "+ skip input + skip contrastive",
    ),
    Variant(
        "sasrec+next_played",
        {"feedback_input": True, "target": "next_played"},
        "+ skip input, target = next played track (skips are never positives)",
    ),
    Variant(
        "sasrec+played_only",
        {"feedback_input": True, "target": "played_only"},
        "+ skip input, CE only where the next track was played (skips never positive)",
    ),
    Variant(
        "sasrec+played_only+unlikelihood",
        {"feedback_input": True, "target": "played_only", "unlikelihood_weight": 1.0},
        "+ skip input, played-only CE + unlikelihood on a skipped next track",
    ),
    Variant(
        "sasrec+unlikelihood",
        {"feedback_input": True, "unlikelihood_weight": 1.0},
        "+ skip input, skipped next track as explicit negative (unlikelihood)",
    ),
    Variant(
        "sasrec+next_played+unlikelihood",
        {"feedback_input": True, "target": "next_played", "unlikelihood_weight": 1.0},
        "+ skip input, next-played target + unlikelihood on skipped next track",
    ),
    Variant(
        "sasrec+hard_negatives",
        {
            "feedback_input": True,
            "loss": "sampled_softmax",
            "skip_hard_negatives": True,
        },
        "+ skip input, sampled softmax with the session's skips as hard negatives",
    ),
    Variant("bert4rec", {"backbone": "bert4rec"}, "BERT4Rec, masked-item CE"),
    Variant(
        "bert4rec+skip_cl",
        {"backbone": "bert4rec", "skip_cl_weight": PAPER_LAMBDA},
        "BERT4Rec + skip contrastive",
    ),
)
# ML-1M backbone check: SASRec with full-softmax CE as in Klenitskiy & Vasilev
# (RecSys'23), max_seq_len 200 as in the SASRec paper.
ML1M_OVERRIDES = {
    **BASE,
    "max_seq_len": 200,
    "hidden_dim": 64,
    "num_layers": 2,
    "dropout": 0.2,
    "loss": "full_softmax",
}
LOO_VARIANTS = ("sasrec", "sasrec+skip_cl")


def variant_config(base: TrainConfig, variant: Variant, seed: int) -> TrainConfig:
    """``base`` with ``BASE``, then the variant's overrides, then ``seed``."""
    return base.replace(**{**BASE, **variant.overrides, "seed": seed})
