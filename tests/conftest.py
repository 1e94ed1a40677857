"""Shared fixtures: a tiny random training run and its exported, parity-checked bundle.

``tiny_run_dir``   a SessionEncoder (V=60: specials + tracks "t0".."t56", D=16, 1 layer,
                   2 heads, max_seq_len=8, SASRec, feedback input), random weights,
                   saved with training.checkpoint.save_run; popularity decreasing.
``tiny_bundle_dir`` that run exported with top_k=20 (parity checked).
``make_run`` / ``make_bundle`` factories for variants, e.g.
                   ``make_bundle(backbone="bert4rec", top_k=5, max_seq_len=4)``;
                   ``skip_head=True`` adds a (random) skip head, ``skip_weight=0.5``
                   sets its ranking weight beta, ``graded_feedback=True`` grades.
``retrieval_spec`` a manifest's ``retrieval`` field, for tests below the bundle.

Tiers are markers, not folders: tests marked ``slow`` (minutes of load, kill -9
trials) or ``cluster`` (a three-master Redis Cluster) are skipped unless a ``-m``
expression is given, so plain ``python -m pytest`` stays fast; run them with
``python -m pytest tests/service -m "cluster or slow"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skiprec.manifest import (
    CANDIDATES_INPUT_NAMES,
    CANDIDATES_OUTPUT_NAMES,
    QUERY_INPUT_NAMES,
    QUERY_OUTPUT_NAMES,
    RetrievalSpec,
)

TINY_NUM_TRACKS = 57
TINY_TOP_K = 20
HEAVY_MARKERS = ("slow", "cluster")


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.option.markexpr:
        return  # the caller chose the tiers explicitly
    for item in items:
        heavy = [name for name in HEAVY_MARKERS if item.get_closest_marker(name)]
        if heavy:
            item.add_marker(
                pytest.mark.skip(
                    reason=f'{"/".join(heavy)} tier: run with -m "cluster or slow"'
                )
            )


def build_tiny_run(run_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a random tiny run; ``overrides`` replace ModelConfig fields
    (``skip_weight`` sets the skip head's ranking weight, ``policy`` a
    ``SessionPolicy.to_dict()`` the run records as chosen on validation)."""
    # torch is imported lazily so that collecting the suite does not import it: the
    # service tests check that serving code never does.
    import torch

    from skiprec.vocab import NUM_SPECIAL, Vocabulary
    from training.checkpoint import Run, save_run
    from training.model import ModelConfig, SessionEncoder

    num_tracks = overrides.pop("num_tracks", TINY_NUM_TRACKS)
    skip_weight = overrides.pop("skip_weight", 0.0)
    policy = overrides.pop("policy", None)
    settings: dict[str, Any] = {
        "num_items": num_tracks + NUM_SPECIAL,
        "backbone": "sasrec",
        "max_seq_len": 8,
        "hidden_dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "dropout": 0.1,
        "feedback_input": True,
    }
    settings.update(overrides)
    torch.manual_seed(seed)
    model = SessionEncoder(ModelConfig(**settings))
    with torch.no_grad():
        # The default init (std 0.02) leaves every score near 0 and the ranking all
        # near-ties; spread the tracks so top-k comparisons mean something.
        model.item_emb.weight.normal_(std=0.5)
        model.pos_emb.weight.normal_(std=0.5)
        if model.skip_head is not None:
            # Spread p_skip over (0, 1) too, not all near 1/2.
            model.skip_head.bias_emb.weight.normal_(std=1.0)
            model.set_skip_weight(skip_weight)
    model.eval()
    track_ids = tuple(f"t{i}" for i in range(num_tracks))
    save_run(
        Run(
            model=model,
            vocab=Vocabulary(track_ids),
            popularity={t: 1000 - 10 * i for i, t in enumerate(track_ids)},
            train_config={"seed": seed, "epochs": 0, "note": "random tiny test model"},
            metrics={
                "test": {"ndcg@10": 0.0},
                **({"policy": {"chosen": policy}} if policy else {}),
            },
            data_fingerprint="0" * 64,
            step=0,
        ),
        run_dir,
    )
    return run_dir


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    def factory(**overrides: Any) -> Path:
        return build_tiny_run(tmp_path_factory.mktemp("run"), **overrides)

    return factory


@pytest.fixture(scope="session")
def make_bundle(
    tmp_path_factory: pytest.TempPathFactory, make_run: Callable[..., Path]
) -> Callable[..., Path]:
    """``make_bundle(backbone="sasrec", top_k=20, precision="fp32", **model_overrides)
    -> bundle dir``; equal arguments share one export."""
    from model_export.export import export_bundle

    cache: dict[str, Path] = {}

    def factory(
        backbone: str = "sasrec",
        top_k: int = TINY_TOP_K,
        precision: str = "fp32",
        **overrides: Any,
    ) -> Path:
        key = repr((backbone, top_k, precision, sorted(map(repr, overrides.items()))))
        if key not in cache:
            run_dir = make_run(backbone=backbone, **overrides)
            out_dir = tmp_path_factory.mktemp("bundle") / "bundle"
            export_bundle(run_dir, out_dir, top_k=top_k, precision=precision)
            cache[key] = out_dir
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def tiny_bundle_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_run_dir: Path
) -> Path:
    from model_export.export import export_bundle

    out_dir = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    export_bundle(tiny_run_dir, out_dir, top_k=TINY_TOP_K)
    return out_dir


def _tensors(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"name": name, "dtype": "int64", "shape": ["batch_size"]} for name in names]


def retrieval_spec(*depths: tuple[int, int, int], **fields: Any) -> RetrievalSpec:
    """A manifest's ``retrieval`` field with the export's defaults, ``depths`` as
    (max_width, hits, expansion) and any field replaced by ``fields``."""
    return RetrievalSpec.model_validate(
        {
            "library": "usearch",
            "library_version": "2",
            "metric": "ip",
            "connectivity": 16,
            "expansion_add": 200,
            "expansion_search": 256,
            "num_candidates": 200,
            "min_tracks": 0,
            "query_inputs": _tensors(QUERY_INPUT_NAMES),
            "query_outputs": _tensors(QUERY_OUTPUT_NAMES),
            "candidates_inputs": _tensors(CANDIDATES_INPUT_NAMES),
            "candidates_outputs": _tensors(CANDIDATES_OUTPUT_NAMES),
            "recall": {"num_sessions": 1, "recall_at_10": 1.0, "recall_at_100": 1.0},
            "depths": [
                {
                    "max_width": width,
                    "num_candidates": hits,
                    "expansion_search": expansion,
                    "recall": 0.999,
                }
                for width, hits, expansion in depths
            ],
            **fields,
        }
    )
