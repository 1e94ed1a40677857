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
    # a log larger than memory: many files (CSV, CSV.gz, Parquet), streamed
    skiprec train --data 'logs/*.parquet' --out R --stream --min-count 2 \\
        --config training/configs/scale.toml

The preset and the flags become one ``TrainConfig`` (and, with ``--stream``, one
``StreamConfig``) here; the loop is ``training.trainer.train``. Without ``--stream``
every file is loaded into memory and split as one log (``training.splits``); with
it, the sessions are read a file at a time every epoch, held out by a hash of their
id, and the vocabulary and counts come from a first pass (docs/TRAINING_SCALE.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skiprec.vocab import Vocabulary
from training.config import DEFAULT_CONFIG, ConfigError, TrainConfig
from training.data import (
    FORMATS,
    DataError,
    data_fingerprint_of,
    expand_data_paths,
    load_many,
)
from training.distributed import (
    DistContext,
    broadcast_object,
    from_environment,
    shutdown,
)
from training.sources import StreamSource, TrainSource
from training.splits import PROTOCOLS, SPLIT_SEED, Split, make_split
from training.stream import StreamConfig, first_pass
from training.trainer import train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec train",
        description="Train a skip-aware session recommender into a run directory.",
    )
    # --- data ---
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="session data: files, folders or globs (CSV, CSV.gz, Parquet)",
    )
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
    parser.add_argument(
        "--vocab", type=Path, help="a fixed vocabulary (vocab.json) to train on"
    )
    parser.add_argument(
        "--min-count",
        type=int,
        default=1,
        help="tracks seen fewer times in training read as OOV (default 1)",
    )
    # --- streaming (logs larger than memory) ---
    parser.add_argument(
        "--stream",
        action="store_true",
        help="read the files anew every epoch instead of holding the log in memory",
    )
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=StreamConfig.shuffle_buffer,
        help="sessions held by each reader's shuffle",
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=StreamConfig.loader_workers,
        help="data-loader worker processes per rank (0 = in the training process)",
    )
    parser.add_argument(
        "--max-eval-sessions",
        type=int,
        default=StreamConfig.max_eval_sessions,
        help="held-out sessions kept for validation (and as many for test)",
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
    if args.stream and args.split != "session":
        print("skiprec train: --stream holds out whole sessions only", file=sys.stderr)
        return 2
    try:
        paths = expand_data_paths(args.data)
        stream_config = StreamConfig(
            shuffle_buffer=args.shuffle_buffer,
            loader_workers=args.loader_workers,
            min_count=args.min_count,
            max_eval_sessions=args.max_eval_sessions,
            vocab=args.vocab,
        )
    except (DataError, ValueError) as exc:
        print(f"skiprec train: {exc}", file=sys.stderr)
        return 2
    context = from_environment(config.optim.device)
    try:
        if args.stream:
            split, vocab, source, facts = _streamed(
                paths, args.format, config, stream_config, context
            )
        else:
            split, vocab, facts = _in_memory(paths, args, stream_config)
            source = None
        if vocab.num_tracks == 0:
            raise ValueError(f"{' '.join(args.data)}: no training tracks")
        result = train(
            config,
            split,
            vocab,
            args.out,
            data_fingerprint=data_fingerprint_of(paths),
            quiet=args.quiet,
            extra_metrics=facts,
            context=context,
            resume=args.resume,
            source=source,
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


def _in_memory(
    paths: list[Path], args: argparse.Namespace, stream_config: StreamConfig
) -> tuple[Split, Vocabulary, dict[str, Any]]:
    """Every file loaded and split as one log; the vocabulary of its training part."""
    split = make_split(load_many(paths, args.format), args.split)
    vocab = (
        Vocabulary.load(args.vocab)
        if args.vocab is not None
        else Vocabulary.build(
            (t for s in split.train for t in s.track_ids), stream_config.min_count
        )
    )
    return split, vocab, {"split": {"protocol": args.split, "seed": SPLIT_SEED}}


def _streamed(
    paths: list[Path],
    format: str | None,
    config: TrainConfig,
    stream_config: StreamConfig,
    context: DistContext,
) -> tuple[Split, Vocabulary, TrainSource, dict[str, Any]]:
    """The first pass (rank 0's, sent to the others) and this rank's stream."""
    if config.prior.transition_prior:
        raise ConfigError("--stream does not fit the transition prior (in memory only)")
    summary = broadcast_object(
        first_pass(paths, stream_config, config.model.max_seq_len, format)
        if context.is_main
        else None,
        context,
    )
    split = Split(train=[], validation=summary.validation, test=summary.test)
    source = StreamSource(paths, summary, config, stream_config, context, format)
    facts = {
        "split": {"protocol": "session-hash", "held_out": summary.held_out_sessions},
        "stream": {
            "files": len(paths),
            "train_events": summary.num_events,
            "min_count": stream_config.min_count,
            "vocab": str(stream_config.vocab) if stream_config.vocab else None,
            "max_eval_sessions": stream_config.max_eval_sessions,
            "loader_workers": stream_config.loader_workers,
            "shuffle_buffer": stream_config.shuffle_buffer,
        },
    }
    return split, summary.vocab, source, facts


if __name__ == "__main__":
    sys.exit(main())
