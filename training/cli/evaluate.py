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
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skiprec.policy import SessionPolicy
from training.baselines import BASELINES, fit_baseline
from training.checkpoint import load_run
from training.data import FORMATS, DataError, data_fingerprint, load_sessions
from training.evaluation import (
    LogScores,
    Scorer,
    rank_examples,
    session_ids,
    summarize_ranks,
)
from training.protocol import (
    CHOOSE_BY,
    FIXED_POLICIES,
    PENALTY_GRID,
    REFERENCE,
    SAMPLED_NEGATIVES,
    ScorerResult,
    build_split,
    choose_penalties,
    choose_split,
    compare_to_reference,
    policy_name,
    policy_spec,
    run_name,
    skip_block,
)
from training.report import policy_table, skip_table
from training.scoring import TorchScorer
from training.splits import (
    PROTOCOLS,
)
from training.stats import LEVEL, NUM_RESAMPLES


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
    model_name = run_name(run.train_config)
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
    # What the run's bundle serves unless configured: its validation-chosen policy.
    recorded = run.metrics.get("policy", {}).get("chosen")
    default_policy = SessionPolicy(**recorded) if recorded else SessionPolicy()
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
                    "policy_name": policy_name(policy),
                    "policy_spec": policy_spec(policy),
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
            "results_policy": policy_spec(default_policy),
            "protocol": {
                "reference": {"model": reference_key[0], "policy": reference_key[1]},
                "policies": {n: policy_spec(p) for n, p in FIXED_POLICIES.items()},
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
