"""``skiprec train``: train a skip-aware session encoder into a run directory.

    # the production preset (configs/default.toml):
    skiprec train --out runs/mssd \\
        --data ../shared/data/mssd_sessions_derived/mssd_sessions_dev.csv.gz
    skiprec train --data demo.csv --out runs/demo --config training/configs/demo.toml
    skiprec train --data D --out R --backbone bert4rec --skip-cl-weight 0.5
    # data-parallel over 2 processes (docs/TRAINING_SCALE.md):
    torchrun --standalone --nproc-per-node 2 -m skiprec_cli train --data D --out R
    # preemptible: a resume file every 500 steps; rerun the same command to go on
    skiprec train --data D --out R --checkpoint-every 500 --resume

The preset and the flags become one ``TrainConfig`` here; the loop is
``training.trainer.train``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from training.config import DEFAULT_CONFIG, ConfigError, TrainConfig
from training.data import FORMATS, DataError, data_fingerprint, load_sessions
from training.distributed import from_environment, shutdown
from training.splits import PROTOCOLS, SPLIT_SEED, build_vocab, make_split
from training.trainer import train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec train",
        description="Train a skip-aware session recommender into a run directory.",
    )
    # --- data ---
    parser.add_argument("--data", type=Path, required=True, help="session data file")
    parser.add_argument(
        "--out", type=Path, required=True, help="run directory to write"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="data format (default: detected from the file's columns)",
    )
    parser.add_argument(
        "--split",
        choices=PROTOCOLS,
        default="session",
        help="session-disjoint held-out sessions (default) or leave-one-out",
    )
    # --- configuration ---
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="TOML preset (default: production)",
    )
    parser.add_argument("--seed", type=int, help="training seed")
    parser.add_argument(
        "--backbone", choices=["sasrec", "bert4rec"], help="encoder type"
    )
    parser.add_argument(
        "--skip-cl-weight", type=float, help="lambda of the skip contrastive loss"
    )
    parser.add_argument(
        "--feedback-input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a play/skip embedding to each input event",
    )
    parser.add_argument(
        "--target",
        choices=["next", "next_played", "played_only"],
        help="training target",
    )
    parser.add_argument(
        "--transition-prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit the last-track -> candidate prior and weight it on validation",
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda")
    # --- fault tolerance ---
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        help="steps between two resume checkpoints (OUT/resume.pt); 0 = none",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/resume.pt when it is there (same preset and flags)",
    )
    # --- output ---
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = TrainConfig.from_toml(args.config).replace(
            seed=args.seed,
            backbone=args.backbone,
            skip_cl_weight=args.skip_cl_weight,
            feedback_input=args.feedback_input,
            target=args.target,
            transition_prior=args.transition_prior,
            epochs=args.epochs,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
        )
    except ConfigError as exc:
        print(f"skiprec train: {exc}", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"skiprec train: {args.data}: no such data file", file=sys.stderr)
        return 2
    context = from_environment(config.optim.device)
    try:
        sessions = load_sessions(args.data, args.format)
        split = make_split(sessions, args.split)
        vocab = build_vocab(split.train)
        if vocab.num_tracks == 0:
            raise ValueError(f"{args.data}: no training tracks")
        result = train(
            config,
            split,
            vocab,
            args.out,
            data_fingerprint=data_fingerprint(args.data),
            quiet=args.quiet,
            extra_metrics={"split": {"protocol": args.split, "seed": SPLIT_SEED}},
            context=context,
            resume=args.resume,
        )
    except (DataError, ConfigError, ValueError) as exc:
        print(f"skiprec train: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if not args.quiet and context.is_main:
        val, test = result.metrics["validation"], result.metrics["test"]
        print(
            f"best epoch {result.metrics['best_epoch']}: "
            f"val NDCG@10 {val['ndcg@10']:.4f}, "
            f"test NDCG@10 {test.get('ndcg@10', float('nan')):.4f}"
            f" -> {args.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
