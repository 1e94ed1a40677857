"""``skiprec evaluate``: a training run (and optionally the baselines) on a data file.

    skiprec evaluate --run runs/mssd --data mssd_sessions_dev.csv.gz --baselines
    skiprec evaluate --run runs/mssd --data held_out.csv.gz --split all --json out.json

``--split session`` / ``loo`` rebuild the split the run was trained with (same seed) and
score its test examples; ``--split all`` treats every session of the file as held out,
for a file of sessions the run never saw. Ranking is over the full catalogue unless
``--sampled`` (target + 1,000 seeded random tracks, as in the papers). The exclusion
rules are the service's (``skiprec.policy.SessionPolicy``); a run with a transition
prior (``prior.npz``) is scored with it, as its bundle serves. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.baselines import BASELINES, fit_baseline
from training.checkpoint import load_run
from training.config import ConfigError, TrainConfig
from training.data import FORMATS, DataError, data_fingerprint, load_sessions
from training.evaluation import evaluate
from training.report import describe, markdown_table
from training.scoring import TorchScorer
from training.splits import PROTOCOLS, EvalExample, make_split, session_examples

SAMPLED_NEGATIVES = 1000


def _run_name(train_config: Mapping[str, Any]) -> str:
    """The run's row in the table: its variant name (``describe``), or ``model`` for
    a run whose checkpoint holds no training config (a test or benchmark model)."""
    try:
        return describe(TrainConfig.from_checkpoint(train_config))
    except ConfigError:
        return "model"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec evaluate",
        description="Evaluate a run (and the baselines) on a data file's test split.",
    )
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
        default="session",
        help="session-disjoint test (default), leave-one-out test, or all sessions",
    )
    parser.add_argument(
        "--sampled",
        action="store_true",
        help=f"rank the target among {SAMPLED_NEGATIVES} random tracks (papers)",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help=f"also evaluate {', '.join(BASELINES)} fitted on the training split",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.baselines and args.split == "all":
        print("skiprec evaluate: --baselines needs a training split", file=sys.stderr)
        return 2
    try:
        run = load_run(args.run)
        if not args.data.is_file():
            raise FileNotFoundError(f"{args.data}: no such data file")
        sessions = load_sessions(args.data, args.format)
    except (FileNotFoundError, DataError, ValueError) as exc:
        print(f"skiprec evaluate: {exc}", file=sys.stderr)
        return 2
    fingerprint = data_fingerprint(args.data)
    if args.split != "all" and fingerprint != run.data_fingerprint:
        print(
            f"skiprec evaluate: warning: {args.data} is not the file this run was "
            "trained on; its test split may overlap the run's training sessions",
            file=sys.stderr,
        )
    if args.split == "all":
        examples: list[EvalExample] = [e for s in sessions for e in session_examples(s)]
        train_sessions = []
    else:
        split = make_split(sessions, args.split)
        examples, train_sessions = split.test, split.train
    if not examples:
        print(f"skiprec evaluate: {args.data}: no test examples", file=sys.stderr)
        return 2

    negatives = SAMPLED_NEGATIVES if args.sampled else None
    scorers: dict[str, Any] = {
        _run_name(run.train_config): TorchScorer(run.model, prior=run.prior)
    }
    if args.baselines:
        for name in BASELINES:
            scorers[name] = fit_baseline(name, train_sessions, run.vocab)
    results = {
        name: evaluate(scorer, examples, run.vocab, sampled_negatives=negatives)
        for name, scorer in scorers.items()
    }
    table = markdown_table(results)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        payload = {
            "run": str(args.run),
            "data": str(args.data),
            "data_fingerprint": fingerprint,
            "split": args.split,
            "ranking": "sampled" if args.sampled else "full",
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
