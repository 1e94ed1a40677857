"""Train a skip-aware session encoder and save the run directory.

    # the production preset (configs/default.toml):
    skiprec train --out runs/mssd \\
        --data ../shared/data/mssd_sessions_derived/mssd_sessions_dev.csv.gz
    skiprec train --data demo.csv --out runs/demo --config training/configs/demo.toml
    python -m training.train --data D --out R --backbone bert4rec --skip-cl-weight 0.5

The loop: AdamW (decay on matrices only), optional linear warmup + cosine decay,
gradient clipping; validation NDCG@10 every ``eval_every`` epochs through the shared
evaluation harness with a ``TorchScorer`` (the serving encoding and exclusion rules);
early stopping after ``patience`` evaluations without improvement; the best state is
restored, scored on the test split and saved with ``training.checkpoint.save_run``
together with ``curves.png`` and ``train_log.jsonl`` (one JSON object per epoch).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from skiprec.vocab import NUM_SPECIAL, PAD_ID, Vocabulary
from training.batching import (
    Batch,
    TrainWindows,
    build_windows,
    epoch_batches,
    session_skips,
)
from training.checkpoint import Run, save_run
from training.config import DEFAULT_CONFIG, ConfigError, TrainConfig
from training.data import FORMATS, DataError, data_fingerprint, load_sessions
from training.evaluation import evaluate
from training.losses import (
    full_softmax_loss,
    sampled_softmax_loss,
    skip_contrastive_loss,
    unlikelihood_loss,
)
from training.model import SessionEncoder
from training.plots import plot_curves
from training.scoring import TorchScorer
from training.splits import (
    Split,
    build_vocab,
    leave_one_out_split,
    popularity,
    session_disjoint_split,
)

LOG_FILE = "train_log.jsonl"
CURVES_FILE = "curves.png"
SPLIT_SEED = 0  # the held-out sessions do not move with the training seed


@dataclass
class TrainResult:
    model: SessionEncoder  # best state, eval mode, on the CPU
    metrics: dict[str, Any]  # {"validation": {...}, "test": {...}, "best_epoch": ...}
    history: list[dict[str, float]] = field(default_factory=list)


def batch_loss(
    model: SessionEncoder, batch: Batch, config: TrainConfig, generator: torch.Generator
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of one batch and its parts (for the log)."""
    hidden = model(batch.item_ids, batch.feedback)  # [B, T, D]
    has_target = batch.targets != PAD_ID
    use_ul = config.unlikelihood_weight > 0
    has_negative = (batch.negative_targets != PAD_ID) & use_ul
    parts: dict[str, Tensor] = {}
    if config.loss == "full_softmax":
        rows = has_target | has_negative
        logits = model.score(hidden[rows])  # [M, D] -> [M, V]
        parts["main"] = full_softmax_loss(logits, batch.targets[rows])
        if use_ul:
            parts["unlikelihood"] = unlikelihood_loss(
                logits, batch.negative_targets[rows]
            )
    else:
        negatives = torch.randint(
            NUM_SPECIAL,
            model.config.num_items,
            (config.num_negatives,),
            generator=generator,
        ).to(hidden.device)
        hard = None
        if config.skip_hard_negatives:
            skip_ids, _ = session_skips(batch.tracks, batch.skipped)  # [B, S]
            # [B, S] -> [B, T, S] -> [M, S]: each position's session skips
            hard = skip_ids[:, None, :].expand(-1, hidden.shape[1], -1)[has_target]
        parts["main"] = sampled_softmax_loss(
            hidden[has_target],
            batch.targets[has_target],
            model.item_emb.weight,
            negatives,
            hard,
        )
        if use_ul:
            parts["unlikelihood"] = unlikelihood_loss(
                model.score(hidden[has_negative]), batch.negative_targets[has_negative]
            )
    if config.skip_cl_weight > 0:
        skip_ids, skip_mask = session_skips(batch.tracks, batch.skipped)
        anchors = (
            hidden
            if config.skip_cl_anchor == "output"
            else model.item_embeddings(batch.tracks)
        )
        parts["skip_cl"] = skip_contrastive_loss(
            anchors,
            model.item_embeddings(batch.positives),
            model.item_embeddings(skip_ids),
            batch.contrastive_anchors(),
            skip_mask,
            config.skip_cl_temperature,
            config.skip_cl_compat,
        )
    weights = {
        "main": 1.0,
        "unlikelihood": config.unlikelihood_weight,
        "skip_cl": config.skip_cl_weight,
    }
    total = sum(weights[name] * value for name, value in parts.items())
    assert isinstance(total, Tensor)
    return total, {name: float(value.detach()) for name, value in parts.items()}


def _train_epoch(
    model: SessionEncoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: tqdm[Batch],
    config: TrainConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """One optimisation pass; the mean per batch of the loss and of each part."""
    device = torch.device(config.device)
    totals: dict[str, float] = {}
    for batch in batches:
        loss, parts = batch_loss(model, batch.to(device), config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())
        for name, value in {"loss": loss_value, **parts}.items():
            totals[name] = totals.get(name, 0.0) + value
        batches.set_postfix(loss=f"{loss_value:.4f}")
    return {name: total / len(batches) for name, total in totals.items()}


def _optimizer(model: SessionEncoder, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW decaying weight matrices only (not biases, LayerNorm or embeddings)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        is_matrix = param.dim() >= 2 and not name.endswith("_emb.weight")
        (decay if is_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then constant or cosine down to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _prefixed(
    metrics: dict[str, float], prefix: str, keys: Sequence[str]
) -> dict[str, float]:
    return {f"{prefix}_{key}": metrics[key] for key in keys if key in metrics}


def train(
    config: TrainConfig,
    split: Split,
    vocab: Vocabulary,
    run_dir: Path | None = None,
    *,
    data_fingerprint: str = "",
    quiet: bool = False,
    extra_metrics: dict[str, Any] | None = None,
) -> TrainResult:
    """Train on ``split.train``, early-stop on ``split.validation``, test the best.

    With a ``run_dir`` the run is saved there (checkpoint, vocab, popularity, metrics,
    curves, per-epoch log). Raises ValueError when the split has no validation examples.
    """
    if not split.validation:
        raise ValueError("the split has no validation examples; need more sessions")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(config.seed)
    device = torch.device(config.device)

    windows: TrainWindows = build_windows(split.train, vocab, config.max_seq_len)
    model = SessionEncoder(config.model_config(vocab.size)).to(device)
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(len(windows) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, config)
    )
    scorer = TorchScorer(model)
    show = not quiet and sys.stderr.isatty()
    log_path = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / LOG_FILE
        log_path.write_text("")

    history: list[dict[str, float]] = []
    best_ndcg, best_epoch, best_step, stale = -1.0, 0, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    best_validation: dict[str, float] = {}
    step = 0
    started = time.perf_counter()
    epochs = tqdm(range(1, config.epochs + 1), desc="epochs", disable=not show)
    try:
        for epoch in epochs:
            model.train()
            epoch_start = time.perf_counter()
            batches = tqdm(
                epoch_batches(windows, config, generator),
                total=steps_per_epoch,
                desc=f"epoch {epoch}",
                leave=False,
                disable=not show,
            )
            means = _train_epoch(
                model, optimizer, scheduler, batches, config, generator
            )
            step += steps_per_epoch
            row: dict[str, float] = {
                "epoch": epoch,
                "step": step,
                "lr": float(scheduler.get_last_lr()[0]),
                **{f"train_{name}": value for name, value in means.items()},
                "train_seconds": time.perf_counter() - epoch_start,
            }
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                validation = evaluate(scorer, split.validation, vocab)
                row.update(_prefixed(validation, "val", ("ndcg@10", "hr@10", "mrr@10")))
                if validation["ndcg@10"] > best_ndcg:
                    best_ndcg, best_epoch, best_step, stale = (
                        validation["ndcg@10"],
                        epoch,
                        step,
                        0,
                    )
                    best_state = copy.deepcopy(model.state_dict())
                    best_validation = validation
                else:
                    stale += 1
                epochs.set_postfix(
                    val_ndcg10=f"{validation['ndcg@10']:.4f}", best=best_epoch
                )
            row["seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            if log_path is not None:
                with log_path.open("a") as log:
                    log.write(json.dumps(row) + "\n")
            if not quiet and not show:
                print(_progress_line(row), file=sys.stderr, flush=True)
            if stale >= config.patience:
                break
    except KeyboardInterrupt:
        # Ctrl-C ends training early; the best state so far is still tested and saved.
        if not any("val_ndcg@10" in row for row in history):
            raise
        print("interrupted: keeping the best state so far", file=sys.stderr)
    train_seconds = time.perf_counter() - started

    model.load_state_dict(best_state)
    model.eval()
    test = evaluate(scorer, split.test, vocab) if split.test else {}
    metrics: dict[str, Any] = {
        "validation": best_validation,
        "test": test,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": train_seconds,
        "seconds_per_epoch": float(np.mean([r["train_seconds"] for r in history])),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_train_windows": len(windows),
        **(extra_metrics or {}),
    }
    model = model.cpu()
    if run_dir is not None:
        save_run(
            Run(
                model=model,
                vocab=vocab,
                popularity=popularity(split.train),
                train_config=config.to_dict(),
                metrics=metrics,
                data_fingerprint=data_fingerprint,
                step=best_step,
            ),
            run_dir,
        )
        plot_curves(history, run_dir / CURVES_FILE, title=run_dir.name)
    return TrainResult(model=model, metrics=metrics, history=history)


def _progress_line(row: dict[str, float]) -> str:
    text = f"epoch {int(row['epoch'])}: loss {row['train_loss']:.4f}"
    if "val_ndcg@10" in row:
        text += f", val NDCG@10 {row['val_ndcg@10']:.4f}"
    return text + f" ({row['seconds']:.1f} s)"


def make_split(sessions: Sequence[Any], protocol: str) -> Split:
    """``session`` = session-disjoint (default), ``loo`` = leave-one-out per session."""
    if protocol == "session":
        return session_disjoint_split(sessions, seed=SPLIT_SEED)
    if protocol == "loo":
        return leave_one_out_split(sessions)
    raise ValueError(f"unknown split {protocol!r}; expected 'session' or 'loo'")


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
        choices=["session", "loo"],
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
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda")
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
            epochs=args.epochs,
            device=args.device,
        )
    except (ConfigError, TypeError) as exc:
        print(f"skiprec train: {exc}", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"skiprec train: {args.data}: no such data file", file=sys.stderr)
        return 2
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
        )
    except (DataError, ConfigError, ValueError) as exc:
        print(f"skiprec train: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
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
