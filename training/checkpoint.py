"""Save and load a training run: the model, its configs, vocabulary and metrics.

A run directory holds:
    checkpoint.pt     {"model_config", "model_state", "train_config", "step", "metrics",
                       "data_fingerprint"} (the best checkpoint by validation NDCG@10);
                      model_config is ``ModelConfig.to_dict()``, train_config
                      ``TrainConfig.to_dict()`` ({table: {key: value}}, flat in runs
                      trained before the config was nested; ``from_checkpoint`` reads
                      both). ``Run.train_config`` keeps the stored dict as it is.
    vocab.json        skiprec.vocab.Vocabulary
    popularity.json   {track_id: play count in the training split} (cold-start fallback)
    metrics.json      validation/test metrics of the best checkpoint
    prior.npz         only in a run with a transition prior (training/prior.py); a run
                      without one (every run trained before it) has ``Run.prior`` None
    resume.pt         only while a run with ``[optim] checkpoint_every`` trains: the
                      loop's whole state (:class:`ResumeState`), from which
                      ``skiprec train --resume`` continues a killed run; removed once
                      the run is saved
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from skiprec.vocab import Vocabulary
from training.model import ModelConfig, SessionEncoder
from training.prior import PRIOR_FILE, TransitionPrior

CHECKPOINT_FILE = "checkpoint.pt"
VOCAB_FILE = "vocab.json"
POPULARITY_FILE = "popularity.json"
METRICS_FILE = "metrics.json"
RESUME_FILE = "resume.pt"


@dataclass
class Run:
    model: SessionEncoder
    vocab: Vocabulary
    popularity: dict[str, int]
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    step: int = 0
    prior: TransitionPrior | None = None


def save_run(run: Run, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_config": run.model.config.to_dict(),
            "model_state": run.model.state_dict(),
            "train_config": run.train_config,
            "step": run.step,
            "metrics": run.metrics,
            "data_fingerprint": run.data_fingerprint,
        },
        run_dir / CHECKPOINT_FILE,
    )
    run.vocab.save(run_dir / VOCAB_FILE)
    (run_dir / POPULARITY_FILE).write_text(json.dumps(run.popularity))
    (run_dir / METRICS_FILE).write_text(json.dumps(run.metrics, indent=2))
    if run.prior is not None:
        run.prior.save(run_dir / PRIOR_FILE)
    else:
        (run_dir / PRIOR_FILE).unlink(missing_ok=True)  # a rerun into the same dir


def load_run(run_dir: Path) -> Run:
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; is {run_dir} a training run?")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = SessionEncoder(ModelConfig(**payload["model_config"]))
    model.load_state_dict(payload["model_state"])
    model.eval()
    prior = None
    if (run_dir / PRIOR_FILE).is_file():
        prior = TransitionPrior.load(run_dir / PRIOR_FILE)
        if prior.num_items != model.config.num_items:
            raise ValueError(
                f"{run_dir / PRIOR_FILE}: {prior.num_items} rows, the model has "
                f"{model.config.num_items} items"
            )
    return Run(
        model=model,
        vocab=Vocabulary.load(run_dir / VOCAB_FILE),
        popularity=json.loads((run_dir / POPULARITY_FILE).read_text()),
        train_config=payload["train_config"],
        metrics=payload["metrics"],
        data_fingerprint=payload["data_fingerprint"],
        step=payload["step"],
        prior=prior,
    )


@dataclass
class ResumeState:
    """The training loop's whole state between two steps: what it needs to go on as
    if it had never stopped (the same batches, negatives and dropout masks).

    ``epoch`` is the epoch in progress (1-based) and ``batch`` how many of its
    batches are done (0: the epoch has not started); ``epoch_generator_state`` is the
    batching generator's state when that epoch began (its permutation and masks are
    drawn from it again), ``generator_state`` and ``torch_rng_state`` the states
    after the last step done (the negatives and dropout of the next one).
    """

    train_config: dict[str, Any]
    epoch: int
    batch: int
    step: int  # optimisation steps done in all
    totals: dict[str, float]  # sums over the epoch's done batches of each loss part
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    generator_state: Tensor
    epoch_generator_state: Tensor
    torch_rng_state: Tensor
    history: list[dict[str, float]]
    best_ndcg: float
    best_epoch: int
    best_step: int
    stale: int
    best_state: dict[str, Tensor]
    best_validation: dict[str, float]
    train_seconds: float


def save_resume(state: ResumeState, run_dir: Path) -> None:
    """Write ``run_dir/resume.pt`` atomically: a kill mid-write keeps the last one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = run_dir / (RESUME_FILE + ".partial")
    torch.save({f.name: getattr(state, f.name) for f in fields(state)}, partial)
    os.replace(partial, run_dir / RESUME_FILE)


def load_resume(run_dir: Path) -> ResumeState | None:
    """The state ``save_resume`` left in ``run_dir``; None when there is none."""
    path = run_dir / RESUME_FILE
    if not path.is_file():
        return None
    return ResumeState(**torch.load(path, map_location="cpu", weights_only=True))
