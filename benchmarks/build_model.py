"""Synthetic benchmark models: a catalogue of N tracks, an untrained d=64 L=50 SASRec,
exported to a genuine bundle with ``model_export.export.export_bundle``.

The weights are random (latency does not depend on what the model learned), but the
bundle is built by the real exporter, parity-checked against torch on its minimum
session count and validated by ``skiprec.bundle.load_bundle``, exactly like a
production bundle. Bundles are cached by their parameters under ``cache_dir`` so a
rerun of ``skiprec loadtest`` does not re-export (the large catalogues are slow to
export: the item table is stored twice in the graph, as the input embedding and as the
transposed scoring table).

    python -m benchmarks.build_model --tracks 100000 --out /tmp/bundle
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from skiprec.manifest import DEFAULT_VECTOR_DTYPE, VECTOR_DTYPES, VectorDtype

if TYPE_CHECKING:
    from training.checkpoint import Run

TRACK_ID_FORMAT = "trk{:07d}"


@dataclass(frozen=True)
class BenchModel:
    """What the benchmark model is; every field is part of the cache key."""

    num_tracks: int = 100_000
    hidden_dim: int = 64
    max_seq_len: int = 50
    num_layers: int = 2
    num_heads: int = 2
    feedback_input: bool = True
    top_k: int = 200  # model_export.export.DEFAULT_TOP_K, the API's max k
    seed: int = 0
    # A trained run to take the encoder and item table from instead of random
    # weights (its own shape fields then win); a larger num_tracks extends its table.
    source_run: str = ""
    # Export the two-stage files too (ANN index, query and candidates graphs).
    two_stage: bool = False
    # The index's vector precision (model_export.export's ann_vectors).
    ann_vectors: VectorDtype = DEFAULT_VECTOR_DTYPE
    # A session log to draw the export's parity (and two-stage recall) sessions
    # from; default: the exporter's random sessions.
    parity_data: str = ""

    @property
    def key(self) -> str:
        key = (
            f"n{self.num_tracks}-d{self.hidden_dim}-L{self.max_seq_len}-"
            f"l{self.num_layers}-h{self.num_heads}-fb{int(self.feedback_input)}-"
            f"k{self.top_k}-s{self.seed}"
        )
        if self.source_run:
            key += f"-run{Path(self.source_run).name}"
        if self.parity_data:
            key += f"-data{Path(self.parity_data).name.split('.')[0]}"
        if not self.two_stage:
            return key
        # f32 keeps the name the cache had before there was a choice.
        return key + "-ann" + ("" if self.ann_vectors == "f32" else self.ann_vectors)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skiprec" / "bench"


def track_ids(num_tracks: int) -> list[str]:
    """The synthetic catalogue's ids, most popular first."""
    return [TRACK_ID_FORMAT.format(i) for i in range(num_tracks)]


def build_run(run_dir: Path, spec: BenchModel) -> Path:
    """Save a random-weight training run of ``spec`` (training.checkpoint layout)."""
    import torch

    from skiprec.vocab import NUM_SPECIAL, Vocabulary
    from training.checkpoint import Run, save_run
    from training.model import ModelConfig, SessionEncoder

    torch.manual_seed(spec.seed)
    model = SessionEncoder(
        ModelConfig(
            num_items=spec.num_tracks + NUM_SPECIAL,
            backbone="sasrec",
            max_seq_len=spec.max_seq_len,
            hidden_dim=spec.hidden_dim,
            num_layers=spec.num_layers,
            num_heads=spec.num_heads,
            dropout=0.0,
            feedback_input=spec.feedback_input,
        )
    )
    with torch.no_grad():
        # The default init (std 0.02) leaves every score near zero and the ranking
        # all near-ties, which parity would have to resolve by tie tolerance; spread
        # the tables as tests/conftest.py does.
        model.item_emb.weight.normal_(std=0.5)
        model.pos_emb.weight.normal_(std=0.5)
    model.eval()
    ids = track_ids(spec.num_tracks)
    # Zipf-like play counts: the popularity fallback and vocab order look real.
    popularity = {t: int(1_000_000 / (i + 1) ** 0.8) + 1 for i, t in enumerate(ids)}
    save_run(
        Run(
            model=model,
            vocab=Vocabulary(tuple(ids)),
            popularity=popularity,
            train_config={"note": "untrained benchmark model", **asdict(spec)},
            metrics={},
            data_fingerprint="0" * 64,
        ),
        run_dir,
    )
    return run_dir


def extend_run(source: Path, num_tracks: int, seed: int) -> Run:
    """A trained run whose catalogue is grown to ``num_tracks``: each added track is a
    neighbour of a trained one (its item row plus Gaussian noise of a quarter of the
    table's spread; its other per-item rows copied), so the larger table keeps the
    trained geometry the ANN index and the queries see. The added tracks get ids
    after the run's and the smallest play counts. A run with a transition prior is
    refused (its table is per track and is not extended)."""
    import torch

    from skiprec.vocab import NUM_SPECIAL, Vocabulary
    from training.checkpoint import Run, load_run
    from training.model import SessionEncoder

    run = load_run(source)
    old = run.model.config.num_items
    new = num_tracks + NUM_SPECIAL
    if new < old:
        raise ValueError(f"{source} has {old - NUM_SPECIAL} tracks; asked {num_tracks}")
    if new == old:
        return run
    if run.prior is not None:
        raise ValueError(f"{source}: a run with a transition prior cannot be extended")
    generator = torch.Generator().manual_seed(seed)
    parents = torch.randint(NUM_SPECIAL, old, (new - old,), generator=generator)
    state = run.model.state_dict()
    table = state["item_emb.weight"][NUM_SPECIAL:]
    spread = table.std(dim=0, keepdim=True)  # [1, D]
    for name, value in list(state.items()):
        if value.dim() and value.shape[0] == old:  # a per-item table
            added = value[parents].clone()
            if name == "item_emb.weight":
                noise = torch.randn(added.shape, generator=generator)
                added += 0.25 * spread * noise
            state[name] = torch.cat([value, added])
    config = replace(run.model.config, num_items=new)
    model = SessionEncoder(config)
    model.load_state_dict(state)
    model.eval()
    ids = list(run.vocab.track_ids)
    taken = set(ids)
    added_ids = (t for t in track_ids(num_tracks * 2) if t not in taken)
    ids += [next(added_ids) for _ in range(new - old)]
    floor = min(run.popularity.values(), default=1)
    popularity = dict(run.popularity) | dict.fromkeys(ids[old - NUM_SPECIAL :], floor)
    return Run(
        model=model,
        vocab=Vocabulary(tuple(ids)),
        popularity=popularity,
        train_config={**run.train_config, "note": f"{source} extended to {new}"},
        metrics=run.metrics,
        data_fingerprint=run.data_fingerprint,
    )


def ensure_bundle(
    spec: BenchModel, cache_dir: Path | None = None, rebuild: bool = False
) -> Path:
    """The cached bundle for ``spec``, exported first if missing or unreadable."""
    from skiprec.bundle import BundleError, load_bundle

    out_dir = (cache_dir or default_cache_dir()) / spec.key
    if out_dir.exists() and not rebuild:
        try:
            load_bundle(out_dir)
            return out_dir
        except BundleError:
            pass  # stale (older schema or exporter): rebuild below
    export_model(spec, out_dir)
    return out_dir


def export_model(spec: BenchModel, out_dir: Path) -> Path:
    """Build the random run in a temporary directory and export it to ``out_dir``."""
    from model_export.export import export_bundle

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skiprec-bench-run-") as tmp:
        run_dir = Path(tmp) / "run"
        if spec.source_run:
            from training.checkpoint import save_run

            save_run(
                extend_run(Path(spec.source_run), spec.num_tracks, spec.seed), run_dir
            )
        else:
            build_run(run_dir, spec)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        export_bundle(
            run_dir,
            out_dir,
            top_k=spec.top_k,
            model_version=f"bench-{spec.key}",
            ann_min_tracks=0 if spec.two_stage else None,
            ann_required=spec.two_stage,
            ann_vectors=spec.ann_vectors,
            data_path=Path(spec.parity_data) if spec.parity_data else None,
        )
    (out_dir.parent / f"{spec.key}.build.json").write_text(
        json.dumps({"seconds": time.perf_counter() - started, **asdict(spec)})
    )
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=100_000, help="catalogue size")
    parser.add_argument(
        "--top-k", type=int, default=200, help="K of the graph (default 200)"
    )
    parser.add_argument("--out", type=Path, help="bundle dir (default: the cache)")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cache")
    parser.add_argument(
        "--from-run", type=Path, help="a trained run instead of random weights"
    )
    parser.add_argument(
        "--two-stage", action="store_true", help="also export the ANN index"
    )
    parser.add_argument(
        "--ann-vectors",
        choices=VECTOR_DTYPES,
        default=DEFAULT_VECTOR_DTYPE,
        help="the index's vector precision (with --two-stage; default %(default)s)",
    )
    parser.add_argument("--data", type=Path, help="parity sessions from this log")
    args = parser.parse_args(argv)
    spec = BenchModel(
        num_tracks=args.tracks,
        top_k=args.top_k,
        source_run=str(args.from_run.resolve()) if args.from_run else "",
        two_stage=args.two_stage,
        ann_vectors=args.ann_vectors,
        parity_data=str(args.data.resolve()) if args.data else "",
    )
    if args.out is not None:
        print(export_model(spec, args.out))
    else:
        print(ensure_bundle(spec, rebuild=args.rebuild))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
