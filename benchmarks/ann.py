"""Approximate nearest neighbours for candidate generation: recall and build cost.

Compares Spotify's Voyager, faiss-cpu HNSW and usearch on maximum inner product
search (the model's score of a track is ``query . item_embedding``), against exact
scoring of the whole catalogue, over the same HNSW parameters. Each index is tried
on the raw inner product and on the classic MIPS -> nearest-neighbour reduction
(Bachrach et al. 2014: append ``sqrt(max_norm^2 - |x|^2)`` to every item and 0 to the
query, then search by cosine; the ranking is exactly the inner product's).

    python -m benchmarks.ann --json docs/results/ann_recall.json
    python -m benchmarks.ann --tracks 1000000 --json /tmp/ann_1m.json
    python -m benchmarks.ann --run RUN_DIR --data SESSIONS --json /tmp/ann_run.json

Catalogues: ``clustered`` (tracks around genre centroids, norm growing with
popularity, queries near a few tracks of one genre: what a trained item table looks
like) and ``gaussian`` (the untrained benchmark model's table, no structure: the hard
case); with ``--run`` also the run's own item table, with the last hidden states of
its sessions (``--data``) as queries. Recall@k is |ANN top-k & exact top-k| / k;
``candidate_recall@10`` is the share of the exact top-10 found among the ANN's top-C,
which is what an exact re-ranking of C candidates can recover. Times are wall-clock
on whatever the machine is doing: compare them only within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float32]
LIBRARIES = ("voyager", "faiss", "usearch")
TRANSFORMS = ("ip", "augmented")
CONNECTIVITY = 16  # HNSW M, the same for every library
EF_CONSTRUCTION = 200
EF_SEARCH = (64, 128, 256, 512)
CANDIDATES = (100, 200, 500)


@dataclass(frozen=True)
class Catalogue:
    name: str
    items: Matrix  # [M, D], tracks only (no special ids)
    queries: Matrix  # [Q, D]


class AnnIndex(Protocol):
    def search(self, queries: Matrix, k: int, ef: int) -> NDArray[np.int64]: ...

    def size_bytes(self) -> int: ...


def clustered_catalogue(
    num_tracks: int, dim: int, num_queries: int, seed: int
) -> Catalogue:
    """Tracks around 1,000 genre centroids, norms growing with popularity."""
    rng = np.random.default_rng(seed)
    num_genres = 1000
    centroids = rng.normal(size=(num_genres, dim)).astype(np.float32)
    genre = rng.integers(num_genres, size=num_tracks)
    items = centroids[genre] + 0.7 * rng.normal(size=(num_tracks, dim))
    # Index 0 is the most popular track (vocabulary order); trained tables give
    # popular tracks larger norms, which is what makes MIPS differ from cosine.
    popularity_scale = 1.0 + 0.5 * np.log1p(1e4 / (np.arange(num_tracks) + 1.0))
    items = items / np.linalg.norm(items, axis=1, keepdims=True)
    items *= popularity_scale[:, None]
    # A session's genre is a track's, so every genre drawn has tracks.
    session_genres = genre[rng.integers(num_tracks, size=num_queries)]
    queries = np.empty((num_queries, dim), dtype=np.float32)
    for q, g in enumerate(session_genres):
        members = np.flatnonzero(genre == g)
        picked = rng.choice(members, size=min(5, members.size), replace=False)
        queries[q] = items[picked].mean(axis=0) + 0.3 * rng.normal(size=dim)
    return Catalogue("clustered", items.astype(np.float32), queries)


def gaussian_catalogue(
    num_tracks: int, dim: int, num_queries: int, seed: int
) -> Catalogue:
    """The untrained benchmark model's table (``benchmarks/build_model.py``: N(0, 0.5))
    with isotropic queries: no structure for a graph index to exploit."""
    rng = np.random.default_rng(seed)
    items = (0.5 * rng.normal(size=(num_tracks, dim))).astype(np.float32)
    queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
    return Catalogue("gaussian", items, queries)


def run_catalogue(run_dir: Path, data: Path, num_queries: int, seed: int) -> Catalogue:
    """A trained run's track embeddings; queries = the last hidden state of sampled
    sessions' windows, as the serving graph computes it."""
    import torch

    from model_export.export import sessions_from_data
    from skiprec.encoding import EncodingSpec, encode_sessions
    from skiprec.vocab import NUM_SPECIAL
    from training.checkpoint import load_run

    run = load_run(run_dir)
    config = run.model.config
    spec = EncodingSpec.for_model(
        config.backbone, config.max_seq_len, graded=config.graded_feedback
    )
    sessions = sessions_from_data(data, run.vocab, spec.graded, num_queries, seed)
    item_ids, feedback = encode_sessions(sessions, spec)
    with torch.no_grad():
        hidden = run.model(torch.from_numpy(item_ids), torch.from_numpy(feedback))
        queries = hidden[:, -1, :].numpy().astype(np.float32)  # [Q, D]
        items = run.model.item_emb.weight[NUM_SPECIAL:].numpy().astype(np.float32)
    return Catalogue(f"run:{run_dir.name}", items.copy(), queries)


def exact_top(items: Matrix, queries: Matrix, k: int) -> NDArray[np.int64]:
    """The exact top-k track indices by inner product, best first: [Q, k]."""
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], 256):
        scores = queries[start : start + 256] @ items.T  # [q, M]
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return out


def augment(items: Matrix, queries: Matrix) -> tuple[Matrix, Matrix]:
    """MIPS -> cosine: every item gets norm max_norm, the query's extra coordinate is
    0, so cosine order = inner-product order."""
    norms = np.linalg.norm(items, axis=1)
    extra = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0.0))
    items_aug = np.hstack([items, extra[:, None]]).astype(np.float32)
    queries_aug = np.hstack([queries, np.zeros((queries.shape[0], 1))])
    return items_aug, queries_aug.astype(np.float32)


class VoyagerIndex:
    def __init__(self, items: Matrix, cosine: bool) -> None:
        import voyager

        space = voyager.Space.Cosine if cosine else voyager.Space.InnerProduct
        self.index = voyager.Index(
            space,
            num_dimensions=items.shape[1],
            M=CONNECTIVITY,
            ef_construction=EF_CONSTRUCTION,
        )
        self.index.add_items(items, np.arange(items.shape[0]), num_threads=1)

    def search(self, queries: Matrix, k: int, ef: int) -> NDArray[np.int64]:
        ids, _ = self.index.query(queries, k=k, num_threads=1, query_ef=max(ef, k))
        return np.asarray(ids, dtype=np.int64)

    def size_bytes(self) -> int:
        return len(self.index.as_bytes())


class FaissIndex:
    def __init__(self, items: Matrix, cosine: bool) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        if cosine:
            items = items / np.linalg.norm(items, axis=1, keepdims=True)
        self.cosine = cosine
        self.index = faiss.IndexHNSWFlat(
            items.shape[1], CONNECTIVITY, faiss.METRIC_INNER_PRODUCT
        )
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(items)

    def search(self, queries: Matrix, k: int, ef: int) -> NDArray[np.int64]:
        # The query's norm does not change a cosine ranking; no normalising needed.
        self.index.hnsw.efSearch = max(ef, k)
        _, ids = self.index.search(queries, k)
        return np.asarray(ids, dtype=np.int64)

    def size_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).size)


class UsearchIndex:
    def __init__(self, items: Matrix, cosine: bool) -> None:
        from usearch.index import Index

        self.index = Index(
            ndim=items.shape[1],
            metric="cos" if cosine else "ip",
            dtype="f32",
            connectivity=CONNECTIVITY,
            expansion_add=EF_CONSTRUCTION,
        )
        self.index.add(np.arange(items.shape[0]), items, threads=1)

    def search(self, queries: Matrix, k: int, ef: int) -> NDArray[np.int64]:
        # The setter exists; usearch declares it in an order mypy reads as read-only.
        self.index.expansion_search = max(ef, k)  # type: ignore[misc]
        matches = self.index.search(queries, k, threads=1)
        return np.asarray(matches.keys, dtype=np.int64)

    def size_bytes(self) -> int:
        data = self.index.save()  # no path: the bytes
        assert data is not None
        return len(data)


BUILDERS: dict[str, Callable[[Matrix, bool], AnnIndex]] = {
    "voyager": VoyagerIndex,
    "faiss": FaissIndex,
    "usearch": UsearchIndex,
}


def recall(found: NDArray[np.int64], truth: NDArray[np.int64]) -> float:
    """Mean over queries of |found row & truth row| / truth width."""
    hits = sum(
        len(set(f.tolist()) & set(t.tolist()))
        for f, t in zip(found, truth, strict=True)
    )
    return hits / truth.size


def evaluate(catalogue: Catalogue, library: str, transform: str) -> dict[str, Any]:
    """Build one index over ``catalogue`` and measure it at every ef."""
    truth = exact_top(catalogue.items, catalogue.queries, 100)
    items, queries = catalogue.items, catalogue.queries
    if transform == "augmented":
        items, queries = augment(items, queries)
    started = time.perf_counter()
    index = BUILDERS[library](items, transform == "augmented")
    build_s = time.perf_counter() - started
    rows = []
    for ef in EF_SEARCH:
        started = time.perf_counter()
        top10 = index.search(queries, 10, ef)
        query_ms = (time.perf_counter() - started) * 1e3 / len(queries)
        row: dict[str, Any] = {
            "ef": ef,
            "recall@10": round(recall(top10, truth[:, :10]), 4),
            "recall@100": round(recall(index.search(queries, 100, ef), truth), 4),
            "query_ms": round(query_ms, 4),
        }
        for count in CANDIDATES:
            found = index.search(queries, count, ef)
            row[f"candidate_recall@10[C={count}]"] = round(
                recall(found, truth[:, :10]), 4
            )
        rows.append(row)
    return {
        "catalogue": catalogue.name,
        "library": library,
        "transform": transform,
        "num_tracks": int(items.shape[0]),
        "dim": int(catalogue.items.shape[1]),
        "build_s": round(build_s, 2),
        "index_bytes": index.size_bytes(),
        "by_ef": rows,
    }


def library_versions() -> dict[str, str]:
    import faiss
    import usearch
    import voyager

    return {
        "voyager": getattr(voyager, "__version__", "?"),
        "faiss": faiss.__version__,
        "usearch": usearch.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Catalogues
    parser.add_argument("--tracks", type=int, default=100_000, help="synthetic size")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension")
    parser.add_argument("--queries", type=int, default=1000, help="queries per set")
    parser.add_argument("--seed", type=int, default=0, help="catalogue seed")
    parser.add_argument("--run", type=Path, help="also a trained run's item table")
    parser.add_argument("--data", type=Path, help="sessions for --run's queries")
    parser.add_argument(
        "--catalogues",
        default="clustered,gaussian",
        help="synthetic catalogues (comma-separated; '' for none)",
    )
    # What to compare
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="libraries")
    parser.add_argument(
        "--transforms", default=",".join(TRANSFORMS), help="ip,augmented"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    makers = {"clustered": clustered_catalogue, "gaussian": gaussian_catalogue}
    catalogues = [
        makers[name](args.tracks, args.dim, args.queries, args.seed)
        for name in filter(None, args.catalogues.split(","))
    ]
    if args.run is not None:
        if args.data is None:
            parser.error("--run needs --data (its sessions give the queries)")
        catalogues.append(run_catalogue(args.run, args.data, args.queries, args.seed))
    results = []
    for catalogue in catalogues:
        for library in args.libraries.split(","):
            for transform in args.transforms.split(","):
                result = evaluate(catalogue, library, transform)
                results.append(result)
                print(json.dumps(result), flush=True)
    report = {
        "command": "python -m benchmarks.ann "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "hnsw": {"M": CONNECTIVITY, "ef_construction": EF_CONSTRUCTION},
        "versions": library_versions(),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "threads": 1,
        "results": results,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
