"""The training loop: a ``TrainConfig`` and a split in, the best model and a run out.

``skiprec train`` (``training/cli/train.py``) and ``skiprec benchmark`` both call
:func:`train`. The loop: AdamW (decay on matrices only), optional linear warmup +
cosine decay, gradient clipping; validation NDCG@10 every ``eval_every`` epochs through
the shared evaluation harness with a ``TorchScorer`` (the serving encoding and
exclusion rules; on a large catalogue the sampled ranks of
``training.sampled_ranks``); early stopping after ``patience`` evaluations without
improvement; the best state is restored, scored on the test split and saved with
``training.checkpoint.save_run`` together with ``curves.png`` and ``train_log.jsonl``
(one JSON object per epoch). Progress goes to stderr: tqdm bars on a terminal, one line
per epoch otherwise.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from skiprec.policy import SessionPolicy
from skiprec.vocab import PAD_ID, Vocabulary
from training.batching import Batch, contrastive_pairs, session_skips
from training.checkpoint import (
    RESUME_FILE,
    ResumeState,
    Run,
    load_resume,
    save_resume,
    save_run,
)
from training.config import LossConfig, OptimConfig, TrainConfig
from training.distributed import (
    SINGLE,
    DistContext,
    broadcast_flag,
    mean_over_ranks,
)
from training.evaluation import evaluate, summarize_ranks
from training.losses import (
    authors_code_contrastive_loss,
    full_softmax_loss,
    sampled_softmax_loss,
    skip_bce_loss,
    skip_contrastive_loss,
    unlikelihood_loss,
)
from training.model import ModelConfig, SessionEncoder
from training.negatives import (
    candidate_log_q,
    count_distribution,
    draw_negatives,
    needs_distribution,
)
from training.plots import plot_curves
from training.prior import tune_prior
from training.protocol import choose_policy
from training.sampled_ranks import SampledRanking, sampled_ranks, validation_ranking
from training.scoring import TorchScorer
from training.sources import MemorySource, TrainSource
from training.splits import Split

LOG_FILE = "train_log.jsonl"
CURVES_FILE = "curves.png"
# beta of the skip head in the ranking; 0 (the logits alone) is always a candidate.
SKIP_WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class TrainResult:
    model: SessionEncoder  # best state, eval mode, on the CPU
    metrics: dict[str, Any]  # {"validation": {...}, "test": {...}, "best_epoch": ...}
    history: list[dict[str, float]] = field(default_factory=list)


def batch_loss(
    model: SessionEncoder,
    batch: Batch,
    config: LossConfig,
    generator: torch.Generator,
    encoder: torch.nn.Module | None = None,
    track_probs: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of one batch and its parts (for the log).

    ``encoder`` runs the forward pass when given: the DDP wrapper of ``model``, whose
    forward is what arms the gradient all-reduce of the backward pass.
    ``track_probs`` ([V], ``training.negatives.track_distribution``) is needed by the
    popularity sampler and the log-Q correction.
    """
    hidden = (encoder or model)(batch.item_ids, batch.feedback)  # [B, T, D]
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
        negatives = draw_negatives(
            config, model.config.num_items, track_probs, generator
        ).to(hidden.device)
        log_q = None
        if config.logq_correction:
            if track_probs is None:
                raise ValueError("the log-Q correction needs the track distribution")
            num_targets = int(has_target.sum())
            log_q = candidate_log_q(config, track_probs, num_targets).to(hidden.device)
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
            in_batch=config.in_batch_negatives,
            log_q=log_q,
        )
        if use_ul:
            parts["unlikelihood"] = unlikelihood_loss(
                model.score(hidden[has_negative]), batch.negative_targets[has_negative]
            )
    if config.skip_cl_weight > 0:
        pairs = contrastive_pairs(
            batch, config, model.config.backbone, model.config.max_seq_len
        )
        anchors = (
            hidden
            if config.skip_cl_anchor == "output"
            else model.item_embeddings(batch.tracks)
        )
        # Positives and negatives in one lookup: each lookup's backward is a dense
        # [V, D] gradient of the item table (a zero fill and a sum per lookup).
        # [B, T] + [B, S] -> [B, T + S] -> [B, T + S, D] -> [B, T, D], [B, S, D]
        positive_emb, negative_emb = torch.split(
            model.item_embeddings(torch.cat([pairs.positives, pairs.negatives], 1)),
            [pairs.positives.shape[1], pairs.negatives.shape[1]],
            dim=1,
        )
        embedded = (
            anchors,
            positive_emb,
            negative_emb,
            pairs.anchors,
            pairs.negative_mask,
        )
        if pairs.negative_rows is None:
            parts["skip_cl"] = skip_contrastive_loss(
                *embedded, config.skip_cl_temperature
            )
        else:  # skip_cl_compat: the authors' code
            parts["skip_cl"] = authors_code_contrastive_loss(
                *embedded,
                pairs.negative_rows,
                model.config.max_seq_len,
                config.skip_cl_temperature,
            )
    if config.skip_head_weight > 0:
        has_next = batch.skip_targets != PAD_ID  # [B, T]
        # [M, D], [M, 1] -> [M]: the skip logit of the track that came next
        skip_logits = model.skip_logits(
            hidden[has_next], batch.skip_targets[has_next][:, None]
        )[:, 0]
        parts["skip_head"] = skip_bce_loss(
            skip_logits,
            batch.skip_labels[has_next],
            torch.ones_like(skip_logits, dtype=torch.bool),
        )
    weights = {
        "main": 1.0,
        "unlikelihood": config.unlikelihood_weight,
        "skip_cl": config.skip_cl_weight,
        "skip_head": config.skip_head_weight,
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
    device: torch.device,
    encoder: torch.nn.Module | None = None,
    track_probs: Tensor | None = None,
    totals: dict[str, float] | None = None,
    after_step: Callable[[int, dict[str, float]], None] | None = None,
    done_before: int = 0,
) -> tuple[dict[str, float], int]:
    """One optimisation pass: the mean per batch of the loss and of each part, and
    the epoch's number of steps.

    ``totals``: the sums of the ``done_before`` batches a resumed epoch already did
    (``batches`` then yields the rest); ``after_step(steps done by this call, sums)``
    runs after every step.
    """
    totals = dict(totals or {})
    steps = 0
    for steps, batch in enumerate(batches, start=1):
        loss, parts = batch_loss(
            model, batch.to(device), config.loss, generator, encoder, track_probs
        )
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # loss.backward(), which is untyped
        if config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())
        for name, value in {"loss": loss_value, **parts}.items():
            totals[name] = totals.get(name, 0.0) + value
        batches.set_postfix(loss=f"{loss_value:.4f}")
        if after_step is not None:
            after_step(steps, totals)
    done = done_before + steps
    return {name: total / max(done, 1) for name, total in totals.items()}, done


def _optimizer(model: SessionEncoder, config: OptimConfig) -> torch.optim.AdamW:
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
    # fused: one kernel per step over all parameters instead of a pass per
    # operation per tensor; on the CPU the update of a 100k-track item table was
    # most of a step's time unfused (docs/TRAINING_SCALE.md, "Throughput").
    return torch.optim.AdamW(groups, lr=config.lr, fused=True)


def _lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
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
    context: DistContext = SINGLE,
    resume: bool = False,
    source: TrainSource | None = None,
) -> TrainResult:
    """Train on ``split.train``, early-stop on ``split.validation``, test the best.

    ``source`` replaces ``split.train`` as the training data (a streamed log,
    ``training.sources.StreamSource``); the split then only holds the held-out
    examples.

    With a ``run_dir`` the run is saved there (checkpoint, vocab, popularity, metrics,
    curves, per-epoch log). Raises ValueError when the split has no validation examples.

    Under torchrun (``context`` from ``training.distributed.from_environment``) every
    rank trains its share of each global batch in DDP; rank 0 alone validates, decides
    early stopping, tunes the serving choices and writes ``run_dir``, and the other
    ranks return their final (not best) model with only ``world_size`` as metrics.

    ``[optim] checkpoint_every`` > 0 writes ``run_dir/resume.pt`` every that many
    steps and at each epoch's end; ``resume`` continues from it when it is there
    (every rank reads it: a shared file system under torchrun), with the same
    batches and random draws as the run that was killed had it gone on.
    """
    if not split.validation:
        raise ValueError("the split has no validation examples; need more sessions")
    torch.manual_seed(config.optim.seed)
    np.random.seed(config.optim.seed)
    # torchrun's processes share the machine's cores rather than each taking all.
    cores = (os.cpu_count() or 1) // context.local_world_size
    torch.set_num_threads(config.optim.num_threads or max(1, cores))
    generator = torch.Generator().manual_seed(config.optim.seed)
    device = context.device(config.optim.device)

    if source is None:
        source = MemorySource.build(split.train, vocab, config)
    elif config.prior.transition_prior:
        raise ValueError("the transition prior is fitted on in-memory sessions only")
    model = SessionEncoder(ModelConfig.for_vocab(config.model, vocab.size)).to(device)
    track_probs = None
    if needs_distribution(config.loss):
        # On the CPU, as the batching generator that samples from it.
        track_probs = count_distribution(source.track_counts())
    encoder: torch.nn.Module | None = None
    if context.is_distributed:
        # DDP broadcasts rank 0's initial parameters; the seed makes them equal anyway.
        encoder = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # The gradients live in the all-reduce buckets: no copy of the item
            # table's gradient into a bucket and back at every step.
            gradient_as_bucket_view=True,
        )
    optimizer = _optimizer(model, config.optim)
    steps_per_epoch = source.steps_per_epoch(context)
    total_steps = steps_per_epoch * config.optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, config.optim)
    )
    scorer = TorchScorer(model)
    ranking = validation_ranking(vocab)  # sampled on a large catalogue
    quiet = quiet or not context.is_main
    show = not quiet and sys.stderr.isatty()
    log_path = None
    if run_dir is not None and context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / LOG_FILE
        log_path.write_text("")

    history: list[dict[str, float]] = []
    best_ndcg, best_epoch, best_step, stale = -1.0, 0, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    best_validation: dict[str, float] = {}
    step = 0
    first_epoch, done_batches, done_totals, earlier_seconds = 1, 0, {}, 0.0
    saved = load_resume(run_dir) if resume and run_dir is not None else None
    if saved is not None:
        if saved.train_config != config.to_dict():
            raise ValueError(
                f"{RESUME_FILE} in {run_dir} was written by another configuration; "
                "resume with the same preset and flags, or train afresh"
            )
        model.load_state_dict(saved.model_state)
        optimizer.load_state_dict(saved.optimizer_state)
        scheduler.load_state_dict(saved.scheduler_state)
        torch.set_rng_state(saved.torch_rng_state)
        # ``step`` counts the steps of finished epochs here; the file counts all.
        history, step, stale = saved.history, saved.step - saved.batch, saved.stale
        best_ndcg, best_epoch, best_step = (
            saved.best_ndcg,
            saved.best_epoch,
            saved.best_step,
        )
        best_state, best_validation = saved.best_state, saved.best_validation
        first_epoch, done_batches, done_totals = saved.epoch, saved.batch, saved.totals
        earlier_seconds = saved.train_seconds
        generator.set_state(saved.generator_state)
        if log_path is not None:
            log_path.write_text("".join(json.dumps(row) + "\n" for row in history))
    checkpointing = run_dir is not None and config.optim.checkpoint_every > 0

    def checkpoint(epoch: int, batch: int, totals: dict[str, float]) -> None:
        """rank 0 writes the loop's state: ``batch`` batches of ``epoch`` done."""
        if not (checkpointing and context.is_main and run_dir is not None):
            return
        state = ResumeState(
            train_config=config.to_dict(),
            epoch=epoch,
            batch=batch,
            step=step + batch,
            totals=totals,
            model_state=model.state_dict(),
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
            generator_state=generator.get_state(),
            epoch_generator_state=epoch_generator_state,
            torch_rng_state=torch.get_rng_state(),
            history=history,
            best_ndcg=best_ndcg,
            best_epoch=best_epoch,
            best_step=best_step,
            stale=stale,
            best_state=best_state,
            best_validation=best_validation,
            train_seconds=earlier_seconds + time.perf_counter() - started,
        )
        save_resume(state, run_dir)

    started = time.perf_counter()
    epochs = tqdm(
        range(first_epoch, config.optim.epochs + 1), desc="epochs", disable=not show
    )
    try:
        for epoch in epochs:
            model.train()
            epoch_start = time.perf_counter()
            epoch_generator_state = generator.get_state()
            epoch_iter = source.batches(epoch, generator, context)
            totals: dict[str, float] = {}
            if done_batches and saved is not None:
                # Draw the killed epoch again from its starting state, skip what it
                # had done, and go on with the draws of its next step.
                epoch_generator_state = saved.epoch_generator_state
                generator.set_state(epoch_generator_state)
                epoch_iter = source.batches(epoch, generator, context)
                for _ in islice(epoch_iter, done_batches):
                    pass
                generator.set_state(saved.generator_state)
                totals = done_totals
            batches = tqdm(
                epoch_iter,
                total=steps_per_epoch,
                initial=done_batches,
                desc=f"epoch {epoch}",
                leave=False,
                disable=not show,
            )

            def after_step(
                steps: int,
                sums: dict[str, float],
                epoch: int = epoch,
                done_before: int = done_batches,
                steps_before: int = step,
            ) -> None:
                done = done_before + steps
                every = config.optim.checkpoint_every
                if every and (steps_before + done) % every == 0:
                    checkpoint(epoch, done, sums)

            means, epoch_steps = _train_epoch(
                model,
                optimizer,
                scheduler,
                batches,
                config,
                generator,
                device,
                encoder,
                track_probs,
                totals,
                after_step,
                done_batches,
            )
            done_batches = 0
            means = mean_over_ranks(means, context)
            step += epoch_steps
            row: dict[str, float] = {
                "epoch": epoch,
                "step": step,
                "lr": float(scheduler.get_last_lr()[0]),
                **{f"train_{name}": value for name, value in means.items()},
                "train_seconds": time.perf_counter() - epoch_start,
            }
            evaluates = (
                epoch % config.optim.eval_every == 0 or epoch == config.optim.epochs
            )
            if evaluates and context.is_main:
                validation = _validate(scorer, split, vocab, ranking)
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
            stop = broadcast_flag(stale >= config.optim.patience, context)
            # An early stop is written as "no epoch left", so a resume ends too.
            checkpoint(config.optim.epochs + 1 if stop else epoch + 1, 0, {})
            if stop:
                break
    except KeyboardInterrupt:
        # Ctrl-C ends training early; the best state so far is still tested and saved.
        if not any("val_ndcg@10" in row for row in history):
            raise
        print("interrupted: keeping the best state so far", file=sys.stderr)
    train_seconds = earlier_seconds + time.perf_counter() - started
    if not context.is_main:
        return TrainResult(
            model=model.cpu().eval(),
            metrics={"world_size": context.world_size},
            history=history,
        )

    model.load_state_dict(best_state)
    model.eval()
    # Skip head: beta of logits + beta * log(1 - p_skip), chosen on validation and
    # kept in the model (SkipHead.skip_weight); the prior below is tuned on top.
    skip_weight_summary = choose_skip_weight(model, split, vocab)
    # [prior]: the transition prior, fitted on train and weighted on validation; the
    # test figures below are those of the model with it, as the run will serve.
    prior, prior_summary = tune_prior(model, split, vocab, config.prior)
    scorer = TorchScorer(model, prior=prior)
    # The serving policy (exclude / penalize / none for tracks heard earlier), chosen
    # on validation last, on top of beta and the prior; the test figures are the
    # run's under it, as its bundle serves.
    policy, policy_summary = (
        choose_policy(scorer, split.validation, vocab)
        if split.validation
        else (SessionPolicy(), {})
    )
    test = evaluate(scorer, split.test, vocab, policy) if split.test else {}
    metrics: dict[str, Any] = {
        "validation": best_validation,
        "test": test,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": train_seconds,
        "seconds_per_epoch": float(np.mean([r["train_seconds"] for r in history])),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_train_windows": source.num_windows,
        "world_size": context.world_size,
        "validation_ranking": ranking.to_dict() if ranking else {"ranking": "full"},
        **({"prior": prior_summary} if prior_summary else {}),
        **({"policy": policy_summary} if policy_summary else {}),
        **({"skip_weight": skip_weight_summary} if skip_weight_summary else {}),
        **(extra_metrics or {}),
    }
    model = model.cpu()
    if run_dir is not None:
        save_run(
            Run(
                model=model,
                vocab=vocab,
                popularity=source.popularity(),
                train_config=config.to_dict(),
                metrics=metrics,
                data_fingerprint=data_fingerprint,
                step=best_step,
                prior=prior,
            ),
            run_dir,
        )
        plot_curves(history, run_dir / CURVES_FILE, title=run_dir.name)
        (run_dir / RESUME_FILE).unlink(missing_ok=True)  # the run is complete
    return TrainResult(model=model, metrics=metrics, history=history)


def choose_skip_weight(
    model: SessionEncoder,
    split: Split,
    vocab: Vocabulary,
    grid: Sequence[float] = SKIP_WEIGHT_GRID,
) -> dict[str, Any]:
    """Set the model's ranking weight beta to the best of ``grid`` on validation.

    Validation NDCG@10 (the serving policy, as early stopping uses) of
    ``logits + beta * log(1 - p_skip)`` for each beta; a tie keeps the smaller beta,
    so a head that does not help ranking leaves it at 0. Returns ``{}`` for a model
    without a skip head, else ``{"chosen", "grid", "validation_ndcg@10"}``.
    """
    if model.skip_head is None:
        return {}
    results = []
    for beta in sorted(grid):
        model.set_skip_weight(beta)
        results.append(evaluate(TorchScorer(model), split.validation, vocab))
    ndcgs = [r["ndcg@10"] for r in results]
    chosen = sorted(grid)[int(np.argmax(ndcgs))]  # argmax: the first of equal ones
    model.set_skip_weight(chosen)
    return {
        "chosen": chosen,
        "grid": sorted(grid),
        "validation_ndcg@10": ndcgs,
    }


def _validate(
    scorer: TorchScorer,
    split: Split,
    vocab: Vocabulary,
    ranking: SampledRanking | None,
) -> dict[str, float]:
    """Validation metrics of the model being trained: full ranking, or the sampled
    ranks of ``training.sampled_ranks`` from its catalogue size on."""
    if ranking is None:
        return evaluate(scorer, split.validation, vocab)
    ranked = sampled_ranks(scorer.model, split.validation, vocab, ranking)
    return summarize_ranks(ranked, split.validation)


def _progress_line(row: dict[str, float]) -> str:
    text = f"epoch {int(row['epoch'])}: loss {row['train_loss']:.4f}"
    if "val_ndcg@10" in row:
        text += f", val NDCG@10 {row['val_ndcg@10']:.4f}"
    return text + f" ({row['seconds']:.1f} s)"
