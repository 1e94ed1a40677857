"""``skiprec sampled-error``: how far the sampled validation ranks
(``training.sampled_ranks``) are from full ranking, on a trained run's validation
examples.

    skiprec sampled-error --run runs/syn100k --data syn100k.csv.gz \\
        --json docs/results/train_sampled_metric.json

``--run`` is a finished run, or one in progress (its ``resume.pt``: the latest
state, the vocabulary rebuilt from the data's training split as the run built it).
Both rankings score the same examples with the same model (its logits, the default
session policy: what validation during training ranks by); the sampled one for each
``--head``/``--tail`` setting and ``--seeds`` seeds. Reports NDCG@10, HR@10 and
MRR@10 of each, their differences, and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skiprec.vocab import Vocabulary
from training.checkpoint import (
    CHECKPOINT_FILE,
    RESUME_FILE,
    load_resume,
    load_run,
)
from training.config import TrainConfig
from training.data import load_sessions
from training.evaluation import rank_examples, summarize_ranks
from training.model import ModelConfig, SessionEncoder
from training.sampled_ranks import NUM_HEAD, NUM_TAIL, SampledRanking, sampled_ranks
from training.scoring import TorchScorer
from training.splits import Split, build_vocab, make_split

KEYS = ("ndcg@10", "hr@10", "mrr@10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec sampled-error",
        description="Sampled validation ranks against full ranking on a run.",
    )
    parser.add_argument("--run", type=Path, required=True, help="a trained run")
    parser.add_argument("--data", type=Path, required=True, help="its data file")
    parser.add_argument(
        "--examples", type=int, default=20_000, help="validation examples (first N)"
    )
    parser.add_argument(
        "--head", type=int, nargs="+", default=[NUM_HEAD], help="exact head sizes"
    )
    parser.add_argument(
        "--tail", type=int, nargs="+", default=[NUM_TAIL], help="tail sample sizes"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model, vocab, split = _model(args.run, args.data)
    examples = split.validation[: args.examples]
    started = time.perf_counter()
    full = summarize_ranks(rank_examples(TorchScorer(model), examples, vocab), examples)
    full_seconds = time.perf_counter() - started
    rows: list[dict[str, Any]] = []
    for head in args.head:
        for tail in args.tail:
            for seed in range(args.seeds):
                ranking = SampledRanking(num_head=head, num_tail=tail, seed=seed)
                started = time.perf_counter()
                ranked = sampled_ranks(model, examples, vocab, ranking)
                seconds = time.perf_counter() - started
                sampled = summarize_ranks(ranked, examples)
                rows.append(
                    {
                        **ranking.to_dict(),
                        "seconds": round(seconds, 2),
                        **{key: round(sampled[key], 5) for key in KEYS},
                        **{
                            f"error_{key}": round(sampled[key] - full[key], 5)
                            for key in KEYS
                        },
                    }
                )
                print(
                    f"head {head} tail {tail} seed {seed}: NDCG@10 "
                    f"{sampled['ndcg@10']:.4f} (full {full['ndcg@10']:.4f}, error "
                    f"{sampled['ndcg@10'] - full['ndcg@10']:+.4f}), {seconds:.1f} s "
                    f"(full {full_seconds:.1f} s)",
                    flush=True,
                )
    errors = np.array([row["error_ndcg@10"] for row in rows])
    payload = {
        "run": str(args.run),
        "data": str(args.data),
        "num_tracks": vocab.num_tracks,
        "num_examples": len(examples),
        "full": {
            "seconds": round(full_seconds, 2),
            **{key: round(full[key], 5) for key in KEYS},
        },
        "sampled": rows,
        "max_abs_error_ndcg@10": round(float(np.abs(errors).max()), 5),
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


def _model(run_dir: Path, data: Path) -> tuple[SessionEncoder, Vocabulary, Split]:
    """The run's model (finished, or its resume state), vocabulary and split."""
    if (run_dir / RESUME_FILE).is_file() and not (run_dir / CHECKPOINT_FILE).is_file():
        state = load_resume(run_dir)
        assert state is not None
        split = make_split(load_sessions(data), "session")
        vocab = build_vocab(split.train)
        settings = TrainConfig.from_checkpoint(state.train_config).model
        model = SessionEncoder(ModelConfig.for_vocab(settings, vocab.size))
        model.load_state_dict(state.model_state)
        return model.eval(), vocab, split
    run = load_run(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    protocol = metrics.get("split", {}).get("protocol", "session")
    return run.model, run.vocab, make_split(load_sessions(data), protocol)


if __name__ == "__main__":
    sys.exit(main())
