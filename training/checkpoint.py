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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from skiprec.vocab import Vocabulary
from training.model import ModelConfig, SessionEncoder
from training.prior import PRIOR_FILE, TransitionPrior

CHECKPOINT_FILE = "checkpoint.pt"
VOCAB_FILE = "vocab.json"
POPULARITY_FILE = "popularity.json"
METRICS_FILE = "metrics.json"


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
