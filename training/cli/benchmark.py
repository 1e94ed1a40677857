"""``skiprec benchmark``: the quality tables of docs/RESULTS.md, regenerated.

    skiprec benchmark \\
        --data ../shared/data/mssd_sessions_derived/mssd_sessions_dev.csv.gz
    skiprec benchmark --data D --only sasrec sasrec+skip_cl --seeds 0 1 2
    skiprec benchmark --data D --ml1m ../shared/data/movielens_1m/ml-1m.txt.gz

Trains and evaluates what is missing from the cache (``training.experiments``), then
writes the aggregated results (``--json``) and rebuilds the generated block of
``--markdown`` from them (``training.report``). Not the load benchmark of the running
service, which is ``skiprec loadtest``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from training.config import DEFAULT_CONFIG, TrainConfig
from training.experiments import results_payload, run_ml1m, run_protocol
from training.report import results_section, write_generated
from training.variants import BASELINE_NAMES, LAMBDAS, LOO_VARIANTS, VARIANTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec benchmark",
        description="Reproduce docs/RESULTS.md: variants x seeds on MSSD, the lambda "
        "sweep, LOO, ML-1M.",
    )
    # --- what to run ---
    parser.add_argument("--data", type=Path, required=True, help="MSSD sessions file")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="base TOML preset"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds"
    )
    parser.add_argument("--only", nargs="+", help="variant names to (re)run")
    parser.add_argument("--epochs", type=int, help="override the preset's max epochs")
    parser.add_argument("--patience", type=int, help="override early-stop patience")
    parser.add_argument("--threads", type=int, help="torch threads per training run")
    parser.add_argument(
        "--lambdas", type=float, nargs="+", default=list(LAMBDAS), help="sweep values"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the lambda sweep")
    parser.add_argument("--no-loo", action="store_true", help="skip leave-one-out")
    parser.add_argument("--ml1m", type=Path, help="also run the ML-1M backbone check")
    # --- cache and outputs ---
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("runs/benchmark"),
        help="per-run results cache",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("docs/results/mssd.json"),
        help="aggregated results to write",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=Path("docs/RESULTS.md"),
        help="report whose generated block is rewritten",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data.is_file():
        print(f"skiprec benchmark: {args.data}: no such data file", file=sys.stderr)
        return 2
    base = TrainConfig.from_toml(args.config).replace(
        epochs=args.epochs, patience=args.patience, num_threads=args.threads
    )
    names = args.only or [*BASELINE_NAMES, *(v.name for v in VARIANTS)]
    run_protocol(
        args.data,
        "session",
        names,
        args.seeds,
        base,
        args.cache,
        fresh=args.fresh,
        lambdas=() if args.no_sweep else args.lambdas,
    )
    if not args.no_loo:
        loo_names = [n for n in names if n in (*BASELINE_NAMES, *LOO_VARIANTS)]
        run_protocol(
            args.data, "loo", loo_names, args.seeds[:1], base, args.cache, fresh=False
        )
    if args.ml1m is not None:
        run_ml1m(args.ml1m, base, args.cache, args.seeds[0])
    payload = results_payload(args.data, args.cache, args.seeds[0], base)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1))
    generated = results_section(payload)
    print(generated)
    write_generated(args.markdown, generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
