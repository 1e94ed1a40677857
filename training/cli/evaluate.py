"""``skiprec evaluate``: a run against plain Markov, under every serving policy.

    skiprec evaluate --run runs/mssd --data mssd_sessions_dev.csv.gz --baselines
    skiprec evaluate --run runs/mssd --data held_out.csv.gz --split all --json out.json

The protocol (issue 10, "measurement first"):

- The split is the run's: ``skiprec train`` records its protocol and seed in the run
  (``metrics["split"]``); ``--split`` overrides it (with a warning when it differs),
  and is the fallback for a run that records none. ``--split all`` treats every
  session of the file as held out, for a file of sessions the run never saw.
- The reference row of every table is plain Markov on the last track with no rule,
  the baseline a user would write. Every scorer (the run's model, Markov, and with
  ``--baselines`` the others) is ranked under each serving policy
  (``skiprec.policy.SessionPolicy``): ``none``, ``exclude_skipped`` (the old rule),
  ``exclude_played``, ``exclude_both`` and ``penalize``, whose two penalties are
  chosen per scorer on the VALIDATION split from ``PENALTY_GRID`` (by
  ``--choose-by``). Baselines are ranked on log counts, so a penalty is in the same
  log units as for the model's logits.
- The test split is scored once, with the choices fixed. Each row's difference to the
  reference comes with a paired, session-level bootstrap 95% interval
  (``training.stats.paired_bootstrap``).
- Skip prediction on the actual next track (``training.skip_metrics``): AUC, log
  loss, calibration and the within-session same-previous-event pairwise AUC of the
  momentum baselines (fitted on the training split), and of the model when its
  scorer provides ``p_skip`` (``training.evaluation.SkipScorer``), each against the
  momentum logistic regression with an interval.

Ranking is over the full catalogue unless ``--sampled`` (target + 1,000 seeded random
tracks, as in the papers). A run with a transition prior (``prior.npz``) is scored
with it, as its bundle serves. Prints markdown tables; ``--json`` writes everything
(rows, intervals, chosen penalties with the validation grid, which split chose what,
and under ``results`` the metrics under the service's default policy, as before).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skiprec.policy import SessionPolicy
from training.baselines import BASELINES, fit_baseline
from training.checkpoint import load_run
from training.config import ConfigError, TrainConfig
from training.data import FORMATS, DataError, Session, data_fingerprint, load_sessions
from training.evaluation import (
    LogScores,
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
from training.report import describe, policy_table, skip_table
from training.scoring import TorchScorer
from training.skip_metrics import (
    MomentumLogistic,
    PreviousSkipBaseline,
    TrackSkipRateBaseline,
    auc_difference,
    pairwise_auc_difference,
    skip_report,
)
from training.splits import (
    PROTOCOLS,
    SPLIT_SEED,
    EvalExample,
    Split,
    leave_one_out_split,
    session_disjoint_split,
    session_examples,
)
from training.stats import LEVEL, NUM_RESAMPLES, paired_bootstrap

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


def _run_name(train_config: Mapping[str, Any]) -> str:
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


def _policy_name(policy: SessionPolicy) -> str:
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


def _policy_spec(policy: SessionPolicy) -> dict[str, Any]:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec evaluate",
        description=(
            "Evaluate a run against plain Markov (no rule) under every serving "
            "policy, with paired session-bootstrap intervals, and skip prediction."
        ),
    )
    # --- inputs ---
    parser.add_argument(
        "--run", type=Path, required=True, help="training run directory"
    )
    parser.add_argument("--data", type=Path, required=True, help="session data file")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="data format (default: detected from the file's columns)",
    )
    parser.add_argument(
        "--split",
        choices=[*PROTOCOLS, "all"],
        default=None,
        help="split protocol (default: the one the run records; else session); "
        "'all' = every session of the file held out",
    )
    # --- protocol ---
    parser.add_argument(
        "--sampled",
        action="store_true",
        help=f"rank the target among {SAMPLED_NEGATIVES} random tracks (papers)",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help=f"also evaluate {', '.join(b for b in BASELINES if b != 'markov')} "
        "(plain Markov, the reference, always runs when there is a training split)",
    )
    parser.add_argument(
        "--choose-by",
        choices=CHOOSE_BY,
        default="ndcg@10",
        help="validation metric that chooses the penalize policy's penalties",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=NUM_RESAMPLES,
        help="session-bootstrap resamples per interval",
    )
    parser.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of the bootstrap draws"
    )
    parser.add_argument(
        "--no-skip",
        action="store_true",
        help="leave out the skip-prediction block",
    )
    # --- output ---
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    return parser


def _error(message: str) -> int:
    print(f"skiprec evaluate: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bootstrap < 1:
        return _error("--bootstrap must be >= 1")
    try:
        run = load_run(args.run)
        if not args.data.is_file():
            raise FileNotFoundError(f"{args.data}: no such data file")
        sessions = load_sessions(args.data, args.format)
    except (FileNotFoundError, DataError, ValueError) as exc:
        return _error(str(exc))
    if args.baselines and args.split == "all":
        return _error("--baselines needs a training split")
    choice, warnings = choose_split(run.metrics.get("split"), args.split)
    for warning in warnings:
        print(f"skiprec evaluate: warning: {warning}", file=sys.stderr)
    fingerprint = data_fingerprint(args.data)
    if choice.protocol != "all" and fingerprint != run.data_fingerprint:
        print(
            f"skiprec evaluate: warning: {args.data} is not the file this run was "
            "trained on; its test split may overlap the run's training sessions",
            file=sys.stderr,
        )
    split = build_split(sessions, choice)
    examples = split.test
    if not examples:
        return _error(f"{args.data}: no test examples")

    negatives = SAMPLED_NEGATIVES if args.sampled else None
    model_name = _run_name(run.train_config)
    model_scorer = TorchScorer(run.model, prior=run.prior)
    # The reference scorer first, then the run's model, then the other baselines.
    scorers: dict[str, Scorer] = {}
    if split.train:
        scorers[REFERENCE[0]] = LogScores(
            fit_baseline(REFERENCE[0], split.train, run.vocab)
        )
    scorers[model_name] = model_scorer
    if split.train and args.baselines:
        for name in BASELINES:
            if name not in scorers:
                scorers[name] = LogScores(fit_baseline(name, split.train, run.vocab))
    reference_key = REFERENCE if split.train else (model_name, "none")

    # Validation chooses; the test split is then ranked once with the choices fixed.
    results = {name: ScorerResult() for name in scorers}
    if split.validation:
        for name, scorer in scorers.items():
            results[name] = choose_penalties(
                scorer, split.validation, run.vocab, args.choose_by, negatives
            )
    default_policy = SessionPolicy()  # what the service applies unless configured
    for name, scorer in scorers.items():
        chosen = results[name].chosen
        policies = [*FIXED_POLICIES.values(), default_policy]
        if chosen is not None:
            policies.append(chosen)
        results[name].test = rank_examples(
            scorer, examples, run.vocab, policies, sampled_negatives=negatives
        )

    sessions_of = session_ids(examples)
    reference_ranked = results[reference_key[0]].test
    assert reference_ranked is not None
    reference_ranks = reference_ranked.ranks[list(FIXED_POLICIES).index("none")]
    rows: list[dict[str, Any]] = []
    legacy: dict[str, dict[str, float]] = {}
    for name, result in results.items():
        ranked = result.test
        assert ranked is not None
        legacy[name] = summarize_ranks(ranked, examples, len(FIXED_POLICIES))
        row_policies = list(FIXED_POLICIES.items())
        if result.chosen is not None:
            row_policies.append(("penalize", result.chosen))
        for index, (label, policy) in enumerate(row_policies):
            column = index if label != "penalize" else len(FIXED_POLICIES) + 1
            is_reference = (name, label) == reference_key
            rows.append(
                {
                    "model": name,
                    "policy": label,
                    "policy_name": _policy_name(policy),
                    "policy_spec": _policy_spec(policy),
                    "reference": is_reference,
                    "metrics": summarize_ranks(ranked, examples, column),
                    "vs_reference": {}
                    if is_reference
                    else compare_to_reference(
                        ranked.ranks[column],
                        reference_ranks,
                        examples,
                        sessions_of,
                        args.bootstrap,
                        args.bootstrap_seed,
                    ),
                }
            )

    skip: dict[str, Any] | None = None
    if not args.no_skip:
        skip = skip_block(
            split.train,
            examples,
            model_name,
            model_scorer,
            run.vocab,
            args.bootstrap,
            args.bootstrap_seed,
        )

    chosen_penalties = {
        name: {
            "skipped_penalty": r.chosen.skipped_penalty,
            "played_penalty": r.chosen.played_penalty,
            f"validation {args.choose_by}": r.validation["penalize"][args.choose_by],
        }
        for name, r in results.items()
        if r.chosen is not None
    }
    split_label = choice.protocol + (
        f" (seed {choice.seed})" if choice.seed is not None else ""
    )
    tables = [
        policy_table(
            rows,
            title=(
                f"Test split: {split_label}, from the {choice.source}; "
                f"{len(examples)} examples in {int(sessions_of.max()) + 1} sessions; "
                f"{'sampled' if args.sampled else 'full'} ranking. Reference: "
                f"{reference_key[0]}, no rule. Δ = row − reference, paired session "
                f"bootstrap {LEVEL:.0%} interval ({args.bootstrap} resamples)."
            ),
            chosen=chosen_penalties,
            choose_by=args.choose_by,
        )
    ]
    if skip is not None and skip["predictors"]:
        tables.append(skip_table(skip))
    elif skip is not None:
        tables.append(
            "Skip prediction: no predictor (" + "; ".join(skip["notes"]) + ")"
        )
    text = "\n\n".join(tables)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        payload = {
            "run": str(args.run),
            "data": str(args.data),
            "data_fingerprint": fingerprint,
            "split": choice.protocol,
            "split_seed": choice.seed,
            "split_source": choice.source,
            "ranking": "sampled" if args.sampled else "full",
            "results": legacy,
            "results_policy": _policy_spec(default_policy),
            "protocol": {
                "reference": {"model": reference_key[0], "policy": reference_key[1]},
                "policies": {n: _policy_spec(p) for n, p in FIXED_POLICIES.items()},
                "penalty_grid": list(PENALTY_GRID),
                "choose_by": args.choose_by,
                "chosen_on": "validation" if split.validation else None,
                "reported_on": "test",
                "bootstrap": {
                    "unit": "session",
                    "num_resamples": args.bootstrap,
                    "seed": args.bootstrap_seed,
                    "level": LEVEL,
                },
                "num_examples": len(examples),
                "num_sessions": int(sessions_of.max()) + 1,
            },
            "chosen_penalties": chosen_penalties,
            "validation": {
                name: {"policies": r.validation, "penalty_grid": r.validation_grid}
                for name, r in results.items()
                if r.validation
            },
            "rows": rows,
            "skip": skip,
        }
        args.json.write_text(json.dumps(_finite(payload), indent=2) + "\n")
    return 0


def _finite(value: Any) -> Any:
    """NaN / inf floats -> None, so the JSON is strict (RFC 8259)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
