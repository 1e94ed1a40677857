"""The evaluation protocol: choices on validation, the test split once, paired
comparisons against plain Markov.

- The reference row is plain Markov on the last track with no rule (``REFERENCE``).
- Every scorer is ranked under the fixed serving policies (``FIXED_POLICIES``) and
  under ``penalize`` with the two penalties chosen on the VALIDATION split from
  ``PENALTY_GRID`` (``choose_penalties``).
- Each test row's difference to the reference gets a paired session-bootstrap
  interval (``compare_to_reference``); skip prediction on the actual next track is
  compared with the momentum logistic regression (``skip_block``).

``skiprec evaluate`` (training/cli/evaluate.py) is this module's command; the trainer
uses ``choose_penalties`` to record the run's serving policy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skiprec.policy import SessionPolicy
from training.config import ConfigError, TrainConfig
from training.data import Session
from training.evaluation import (
    RankedExamples,
    Scorer,
    SkipScorer,
    previous_skipped,
    rank_examples,
    session_ids,
    skip_probabilities,
    summarize_ranks,
    target_skipped,
)
from training.metrics import hit_per_example, ndcg_per_example
from training.report import describe
from training.skip_baselines import (
    MomentumLogistic,
    PreviousSkipBaseline,
    TrackSkipRateBaseline,
)
from training.skip_metrics import auc_difference, pairwise_auc_difference, skip_report
from training.splits import (
    PROTOCOLS,
    SPLIT_SEED,
    EvalExample,
    Split,
    leave_one_out_split,
    session_disjoint_split,
    session_examples,
)
from training.stats import paired_bootstrap

SAMPLED_NEGATIVES = 1000
REFERENCE = ("markov", "none")
FIXED_POLICIES: dict[str, SessionPolicy] = {
    "none": SessionPolicy(skipped="none", played="none"),
    "exclude_skipped": SessionPolicy(skipped="exclude", played="none"),
    "exclude_played": SessionPolicy(skipped="none", played="exclude"),
    "exclude_both": SessionPolicy(skipped="exclude", played="exclude"),
}
# Penalties in log-score units (log 2 ~ 0.69 halves a track's odds); the same values
# for skipped- and played-earlier tracks, every pair tried on validation.
PENALTY_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
CHOOSE_BY = ("ndcg@10", "played/ndcg@10", "hr@10")
# Per-example metrics whose difference to the reference gets an interval; the
# ``played/`` and ``skipped/`` ones are over the examples of that target kind.
COMPARED = ("ndcg@10", "played/ndcg@10", "skipped/ndcg@10", "hr@10")


def penalize(skipped_penalty: float, played_penalty: float) -> SessionPolicy:
    return SessionPolicy(
        skipped="penalize",
        played="penalize",
        skipped_penalty=skipped_penalty,
        played_penalty=played_penalty,
    )


def run_name(train_config: Mapping[str, Any]) -> str:
    """The run's row in the table: its variant name (``describe``), or ``model`` for
    a run whose checkpoint holds no training config (a test or benchmark model)."""
    try:
        return describe(TrainConfig.from_checkpoint(train_config))
    except ConfigError:
        return "model"


@dataclass(frozen=True)
class SplitChoice:
    """Which split protocol (and seed) was used, and where that came from."""

    protocol: str  # "session", "loo" or "all"
    seed: int | None  # the session-disjoint shuffle's; None for loo / all
    source: str  # "run" (recorded by skiprec train), "flag" or "default"


def choose_split(
    recorded: Mapping[str, Any] | None, flag: str | None
) -> tuple[SplitChoice, list[str]]:
    """The split to rebuild: the run's recorded one unless ``--split`` says otherwise.

    Returns the choice and the warnings to print.
    """
    warnings: list[str] = []
    protocol = recorded.get("protocol") if recorded else None
    if protocol is not None and protocol not in PROTOCOLS:
        warnings.append(f"the run records an unknown split {protocol!r}; ignored")
        protocol = None
    if protocol is not None and flag in (None, protocol):
        assert recorded is not None
        seed = int(recorded.get("seed", SPLIT_SEED)) if protocol == "session" else None
        return SplitChoice(protocol, seed, "run"), warnings
    if flag is None:
        warnings.append(
            "the run records no split protocol (trained before it was recorded?); "
            f"using the session-disjoint split, seed {SPLIT_SEED} (pass --split to "
            "choose)"
        )
        return SplitChoice("session", SPLIT_SEED, "default"), warnings
    if protocol is not None:
        warnings.append(
            f"--split {flag} overrides the run's recorded split ({protocol})"
        )
    return SplitChoice(
        flag, SPLIT_SEED if flag == "session" else None, "flag"
    ), warnings


def build_split(sessions: Sequence[Session], choice: SplitChoice) -> Split:
    if choice.protocol == "session":
        seed = SPLIT_SEED if choice.seed is None else choice.seed
        return session_disjoint_split(sessions, seed=seed)
    if choice.protocol == "loo":
        return leave_one_out_split(sessions)
    return Split(train=[], test=[e for s in sessions for e in session_examples(s)])


@dataclass
class ScorerResult:
    """One scorer through the protocol."""

    chosen: SessionPolicy | None = None  # the validation-chosen penalize policy
    validation_grid: list[dict[str, float]] = field(default_factory=list)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    test: RankedExamples | None = None


def policy_name(policy: SessionPolicy) -> str:
    for name, fixed in FIXED_POLICIES.items():
        if fixed == policy:
            return name
    if policy.skipped == policy.played == "penalize":
        return (
            f"penalize(skipped={policy.skipped_penalty:g}, "
            f"played={policy.played_penalty:g})"
        )
    return (
        f"skipped={policy.skipped}:{policy.skipped_penalty:g}, "
        f"played={policy.played}:{policy.played_penalty:g}"
    )


def policy_spec(policy: SessionPolicy) -> dict[str, Any]:
    return {
        "skipped": policy.skipped,
        "played": policy.played,
        "skipped_penalty": policy.skipped_penalty,
        "played_penalty": policy.played_penalty,
    }


def choose_penalties(
    scorer: Scorer,
    validation: Sequence[EvalExample],
    vocab: Any,
    choose_by: str,
    sampled_negatives: int | None,
) -> ScorerResult:
    """Rank the validation split under the fixed policies and the penalty grid;
    the best grid pair by ``choose_by`` (ties: the first, smallest penalties)."""
    grid = [penalize(s, p) for s, p in itertools.product(PENALTY_GRID, PENALTY_GRID)]
    fixed = list(FIXED_POLICIES.values())
    ranked = rank_examples(
        scorer,
        validation,
        vocab,
        [*fixed, *grid],
        sampled_negatives=sampled_negatives,
    )
    result = ScorerResult()
    for index, name in enumerate(FIXED_POLICIES):
        result.validation[name] = summarize_ranks(ranked, validation, index)
    best_value = -math.inf
    for offset, policy in enumerate(grid):
        metrics = summarize_ranks(ranked, validation, len(fixed) + offset)
        result.validation_grid.append(
            {
                "skipped_penalty": policy.skipped_penalty,
                "played_penalty": policy.played_penalty,
                **{key: metrics[key] for key in CHOOSE_BY},
            }
        )
        if metrics[choose_by] > best_value:
            best_value, result.chosen = metrics[choose_by], policy
            result.validation["penalize"] = metrics
    return result


def choose_policy(
    scorer: Scorer,
    validation: Sequence[EvalExample],
    vocab: Any,
    choose_by: str = "ndcg@10",
) -> tuple[SessionPolicy, dict[str, Any]]:
    """The serving policy a run records: the best on validation by ``choose_by`` of
    the fixed policies and the penalty grid (ties: the fixed ones first, in order).

    Returns the policy and what chose it (for the run's metrics)."""
    result = choose_penalties(scorer, validation, vocab, choose_by, None)
    candidates = [
        (name, FIXED_POLICIES[name], metrics[choose_by])
        for name, metrics in result.validation.items()
        if name in FIXED_POLICIES
    ]
    if result.chosen is not None:
        candidates.append(
            ("penalize", result.chosen, result.validation["penalize"][choose_by])
        )
    name, policy, value = max(candidates, key=lambda c: c[2])
    summary = {
        "chosen": policy.to_dict(),
        "name": name,
        "chosen_by": f"validation {choose_by}",
        "validation": {n: v for n, _, v in candidates},
    }
    return policy, summary


def _per_example(ranks: np.ndarray, metric: str) -> np.ndarray:
    base = metric.split("/")[-1]
    if base == "ndcg@10":
        return ndcg_per_example(ranks, 10)
    if base == "hr@10":
        return hit_per_example(ranks, 10)
    raise ValueError(f"no per-example form of {metric!r}")


def compare_to_reference(
    ranks: np.ndarray,
    reference: np.ndarray,
    examples: Sequence[EvalExample],
    sessions: np.ndarray,
    num_resamples: int,
    seed: int,
) -> dict[str, dict[str, float | int]]:
    """Paired session-bootstrap difference of each ``COMPARED`` metric to the
    reference row's ranks."""
    skipped = target_skipped(examples)
    out: dict[str, dict[str, float | int]] = {}
    for metric in COMPARED:
        group = np.ones(len(examples), dtype=bool)
        if metric.startswith("played/"):
            group = ~skipped
        elif metric.startswith("skipped/"):
            group = skipped
        if not group.any():
            continue
        out[metric] = paired_bootstrap(
            _per_example(ranks[group], metric),
            _per_example(reference[group], metric),
            sessions[group],
            num_resamples=num_resamples,
            seed=seed,
        ).to_dict()
    return out


def skip_block(
    train_sessions: Sequence[Session],
    examples: Sequence[EvalExample],
    model_name: str,
    model_scorer: Any,
    vocab: Any,
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Skip prediction on each example's actual next track: the momentum baselines
    fitted on ``train_sessions`` and the model's ``p_skip`` when it has one, each
    against the momentum logistic regression."""
    labels = target_skipped(examples)
    sessions = session_ids(examples)
    previous = previous_skipped(examples)
    predictions: dict[str, np.ndarray] = {}
    notes: list[str] = []
    logistic: MomentumLogistic | None = None
    if train_sessions:
        logistic = MomentumLogistic.fit(train_sessions)
        predictions["previous_skipped"] = PreviousSkipBaseline.fit(
            train_sessions
        ).predict(examples)
        predictions["track_skip_rate"] = TrackSkipRateBaseline.fit(
            train_sessions
        ).predict(examples)
        predictions["momentum_logistic"] = logistic.predict(examples)
    if isinstance(model_scorer, SkipScorer):
        p_skip = skip_probabilities(model_scorer, examples, vocab)
        if np.isnan(p_skip).all():
            notes.append(f"{model_name}: no skip head (p_skip is NaN)")
        elif np.isnan(p_skip).any():
            notes.append(f"{model_name}: p_skip is NaN for some examples; left out")
        else:
            predictions[model_name] = p_skip
    else:
        notes.append(f"{model_name}: its scorer provides no p_skip")
    predictors: dict[str, dict[str, Any]] = {}
    reference = predictions.get("momentum_logistic")
    for name, p in predictions.items():
        report = skip_report(p, labels, sessions, previous)
        if reference is not None and name != "momentum_logistic":
            report["auc_vs_momentum_logistic"] = auc_difference(
                p, reference, labels, sessions, num_resamples, seed
            ).to_dict()
            report["pairwise_auc_vs_momentum_logistic"] = pairwise_auc_difference(
                p, reference, labels, sessions, previous, num_resamples, seed
            ).to_dict()
        predictors[name] = report
    return {
        "examples": len(examples),
        "reference": "momentum_logistic" if reference is not None else None,
        "fitted_on": "train" if train_sessions else None,
        "logistic_coefficients": logistic.coefficients() if logistic else None,
        "predictors": predictors,
        "notes": notes,
    }
