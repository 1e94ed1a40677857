"""The benchmark's runs: train and evaluate every (protocol, variant, seed) once.

Each result is cached as JSON under the cache directory (``runs/benchmark/`` by
default), so an interrupted benchmark resumes where it stopped; ``fresh=True`` ignores
the cache. :func:`results_payload` aggregates every cached result over seeds (mean and
std per metric) into what docs/results/mssd.json holds and ``training.report`` turns
into the tables of docs/RESULTS.md, so the report always shows exactly what was
measured, with the number of seeds per row. The grid itself is ``training.variants``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.baselines import fit_baseline
from training.config import TrainConfig
from training.data import data_fingerprint, load_sessions
from training.evaluation import evaluate
from training.report import COLUMNS
from training.splits import SPLIT_SEED, build_vocab, leave_one_out_split, make_split
from training.trainer import TrainResult, train
from training.variants import (
    BASELINE_NAMES,
    ML1M_OVERRIDES,
    PAPER_LAMBDA,
    VARIANTS,
    Variant,
    variant_config,
)

REPORT_METRICS = (
    *COLUMNS,
    "hr@1",
    "hr@5",
    "hr@20",
    "ndcg@20",
    "played/hr@10",
    "skipped/hr@10",
)


def _cache_path(cache: Path, protocol: str, name: str, seed: int) -> Path:
    return cache / protocol / f"{name.replace('/', '_')}__seed{seed}.json"


def _trained_result(trained: TrainResult, config: TrainConfig) -> dict[str, Any]:
    """What the cache keeps of a training run: test metrics, timing, config."""
    return {
        **trained.metrics["test"],
        "train_seconds": trained.metrics["train_seconds"],
        "best_epoch": trained.metrics["best_epoch"],
        "seconds_per_epoch": trained.metrics["seconds_per_epoch"],
        "validation_ndcg@10": trained.metrics["validation"]["ndcg@10"],
        "config": config.to_dict(),
    }


def _save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


def _aggregate(results: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"num_seeds": len(results)}
    for key in REPORT_METRICS:
        values = [r[key] for r in results if key in r]
        if values:
            out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    for key in ("train_seconds", "best_epoch", "seconds_per_epoch"):
        values = [r[key] for r in results if key in r]
        if values:
            out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def run_protocol(
    data: Path,
    protocol: str,
    names: Sequence[str],
    seeds: Sequence[int],
    base: TrainConfig,
    cache: Path,
    *,
    fresh: bool,
    lambdas: Sequence[float] = (),
) -> None:
    """Train/evaluate what is missing from the cache for one split protocol."""
    sessions = load_sessions(data)
    fingerprint = data_fingerprint(data)
    split = make_split(sessions, protocol)
    # Early stopping only needs a ranking signal: every third validation example
    # keeps it stable at a third of the evaluation cost.
    split = dataclasses.replace(split, validation=split.validation[::3])
    vocab = build_vocab(split.train)
    jobs: list[tuple[str, int, TrainConfig | None]] = []
    for name in names:
        if name in BASELINE_NAMES:
            jobs.append((name, 0, None))
            continue
        variant = next(v for v in VARIANTS if v.name == name)
        jobs += [(name, seed, variant_config(base, variant, seed)) for seed in seeds]
    for lam in lambdas:
        if lam == PAPER_LAMBDA:  # the sasrec+skip_cl row at the first seed
            continue
        sweep = Variant(f"lambda={lam:g}", {"skip_cl_weight": lam})
        jobs.append((sweep.name, seeds[0], variant_config(base, sweep, seeds[0])))
    # Seed-major order: an interrupted benchmark has every variant at one seed first.
    jobs.sort(key=lambda job: job[1])
    for name, seed, config in jobs:
        path = _cache_path(cache, protocol, name, seed)
        if path.is_file() and not fresh:
            continue
        started = time.perf_counter()
        if config is None:
            result = evaluate(fit_baseline(name, split.train, vocab), split.test, vocab)
        else:
            run_dir = cache / "runs" / protocol / path.stem
            trained = train(
                config, split, vocab, run_dir, data_fingerprint=fingerprint, quiet=True
            )
            result = _trained_result(trained, config)
        _save(path, result)
        print(
            f"[{protocol}] {name} seed {seed}: NDCG@10 {result['ndcg@10']:.4f} "
            f"played {result['played/ndcg@10']:.4f} skipped "
            f"{result['skipped/ndcg@10']:.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def run_ml1m(path: Path, base: TrainConfig, cache: Path, seed: int) -> None:
    """Leave-one-out, full ranking; the last item per user is the test target."""
    out = _cache_path(cache, "ml1m", "sasrec", seed)
    if out.is_file():
        return
    split = leave_one_out_split(load_sessions(path, "ml-1m"))
    vocab = build_vocab(split.train)
    config = base.replace(**{**ML1M_OVERRIDES, "seed": seed})
    trained = train(config, split, vocab, quiet=True)
    result = _trained_result(trained, config)
    _save(out, result)
    print(f"[ml1m] sasrec seed {seed}: NDCG@10 {result['ndcg@10']:.4f}", flush=True)


def collect(cache: Path, protocol: str) -> dict[str, dict[str, Any]]:
    """Every cached result of a protocol, aggregated over seeds per variant."""
    grouped: dict[str, list[dict[str, float]]] = {}
    for path in sorted((cache / protocol).glob("*.json")):
        name = path.stem.rsplit("__seed", 1)[0]
        grouped.setdefault(name, []).append(json.loads(path.read_text()))
    return {name: _aggregate(results) for name, results in grouped.items()}


def lambda_sweep(cache: Path, seed: int) -> dict[str, dict[str, Any]]:
    """The sweep rows, with lambda = PAPER_LAMBDA taken from sasrec+skip_cl."""
    rows = {
        k: v for k, v in collect(cache, "session").items() if k.startswith("lambda=")
    }
    paper = _cache_path(cache, "session", "sasrec+skip_cl", seed)
    if paper.is_file():
        rows[f"lambda={PAPER_LAMBDA:g}"] = _aggregate([json.loads(paper.read_text())])
    return rows


def results_payload(
    data: Path, cache: Path, first_seed: int, base: TrainConfig
) -> dict[str, Any]:
    """Everything cached, aggregated: the content of docs/results/mssd.json."""
    session = collect(cache, "session")
    return {
        "data": data.name,
        "split": {"protocol": "session-disjoint", "seed": SPLIT_SEED},
        "variants": {k: v for k, v in session.items() if not k.startswith("lambda=")},
        "lambda_sweep": lambda_sweep(cache, first_seed),
        "leave_one_out": collect(cache, "loo"),
        "ml1m": collect(cache, "ml1m"),
        "descriptions": {v.name: v.description for v in VARIANTS},
        "base_config": base.to_dict(),
    }
