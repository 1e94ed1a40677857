"""The floors: what the service's parts cost on their own, measured in the same run.

- :func:`onnx_floor` — bare ONNX Runtime inference of the bundle's graph, batch 1 and
  batched, with the same thread settings the service uses.
- :func:`model_floor` — the service's whole model step (``LoadedModel.infer``), whole
  catalogue and two-stage, with the cost of each stage.
- :func:`redis_floor` — one round trip to the Redis server (sync and asyncio redis-py).
- :func:`noop_app` — a FastAPI app with one no-op endpoint, served by
  ``benchmarks/load.py`` under the same uvicorn settings as the service and driven by
  the same load generator: the cost of HTTP + FastAPI with no work behind it.

Comparing the service against the sum of its floors tells how much time goes to glue
(parsing, validation, serialisation, scheduling) rather than to the model or the store.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.loadgen import summarize_latencies

if TYPE_CHECKING:
    from service.inference import InferenceRequest, LoadedModel


def noop_app() -> Any:
    """uvicorn factory: ``uvicorn benchmarks.floors:noop_app --factory``."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/noop")
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    return app


def _time_calls(
    call: Callable[[], object], iterations: int, warmup: int
) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def onnx_floor(
    bundle_dir: Path,
    seq_len: int = 50,
    batch_sizes: Sequence[int] = (1, 8, 32),
    num_excluded: int = 15,
    seconds_per_case: float = 2.0,
    intra_op_threads: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of one ``session.run`` per batch size on random sessions of ``seq_len``
    events with ``num_excluded`` excluded tracks per row (the skips of the session).

    Returns per batch size the call percentiles and the amortised cost per request
    (``per_request_ms`` = p50 / batch size).
    """
    from skiprec.bundle import load_bundle, open_inference_session
    from skiprec.encoding import FEEDBACK_PLAY, FEEDBACK_SKIP, encode_sessions
    from skiprec.manifest import (
        INPUT_CANDIDATES,
        INPUT_EXCLUDE,
        INPUT_FEEDBACK,
        INPUT_ITEM_IDS,
    )

    bundle = load_bundle(bundle_dir)
    session = open_inference_session(bundle, intra_op_threads=intra_op_threads)
    spec = bundle.manifest.encoding_spec()
    rng = random.Random(seed)
    first, last = 3, bundle.manifest.num_items - 1
    out: dict[str, Any] = {
        "num_items": bundle.manifest.num_items,
        "seq_len": seq_len,
        "intra_op_threads": intra_op_threads,
        "batches": {},
    }
    for batch in batch_sizes:
        sessions = [
            [
                (rng.randint(first, last), rng.choice((FEEDBACK_PLAY, FEEDBACK_SKIP)))
                for _ in range(seq_len)
            ]
            for _ in range(batch)
        ]
        item_ids, feedback = encode_sessions(sessions, spec)
        exclude = np.asarray(
            [[rng.randint(first, last) for _ in range(num_excluded)] for _ in sessions],
            dtype=np.int64,
        )
        feeds = {INPUT_ITEM_IDS: item_ids, INPUT_FEEDBACK: feedback}
        feeds[INPUT_EXCLUDE] = exclude
        feeds[INPUT_CANDIDATES] = np.zeros((len(sessions), 1), dtype=np.int64)  # PAD

        def call(feeds: dict[str, np.ndarray] = feeds) -> object:
            return session.run(None, feeds)

        stats = _time_budget(call, seconds_per_case)
        stats["per_request_ms"] = stats["p50_ms"] / batch
        out["batches"][str(batch)] = stats
    return out


def model_floor(
    bundle_dir: Path,
    seq_len: int = 50,
    batch_sizes: Sequence[int] = (1, 8),
    num_excluded: int = 15,
    seconds_per_case: float = 1.0,
    intra_op_threads: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """The service's whole model step, ``LoadedModel.infer`` (encoding, the graph or
    both stages, decoding the top-10), on random sessions of ``seq_len`` events with
    ``num_excluded`` excluded tracks: whole-catalogue scoring, and two-stage when the
    bundle has an index (at every batch size), with the cost of each stage at batch 1
    and the batch size from which the service's calibration scores exactly."""
    from service.inference import NEVER, LoadedModel

    rng = random.Random(seed)
    out: dict[str, Any] = {"seq_len": seq_len, "modes": {}}
    for two_stage in (False, True):
        model = LoadedModel.load(bundle_dir, intra_op_threads, two_stage=two_stage)
        if two_stage and model.retrieval is None:
            break
        if two_stage:
            # What the service's own calibration chose; then the two stages alone.
            out["exact_from"] = model.exact_from if model.exact_from < NEVER else None
            model.exact_from = NEVER
        mode: dict[str, Any] = {"batches": {}}
        for size in batch_sizes:
            batch = _model_requests(model, size, seq_len, num_excluded, rng)
            stats = _time_budget(partial(model.infer, batch), seconds_per_case)
            stats["per_request_ms"] = stats["p50_ms"] / size
            mode["batches"][str(size)] = stats
        if model.retrieval is not None:
            (request,) = _model_requests(model, 1, seq_len, num_excluded, rng)
            mode.update(_stage_costs(model, request))
        out["modes"]["two_stage" if two_stage else "exact"] = mode
    return out


def _model_requests(
    model: LoadedModel, count: int, seq_len: int, num_excluded: int, rng: random.Random
) -> list[InferenceRequest]:
    from service.inference import InferenceRequest

    tracks = model.vocab.track_ids
    batch = []
    for _ in range(count):
        window = tuple(rng.choice(tracks) for _ in range(seq_len))
        skipped = tuple(rng.random() < 0.3 for _ in window)
        excluded = tuple(sorted(set(rng.sample(window, num_excluded))))
        batch.append(InferenceRequest(window, skipped, 10, excluded))
    return batch


def _time_budget(call: Callable[[], object], seconds: float) -> dict[str, Any]:
    """Latency percentiles of ``call`` repeated for about ``seconds``."""
    single = _time_calls(call, 3, 2)
    iterations = max(5, min(2000, int(seconds / max(np.median(single), 1e-6))))
    stats: dict[str, Any] = summarize_latencies(_time_calls(call, iterations, 0))
    stats["iterations"] = iterations
    return stats


def _stage_costs(model: LoadedModel, request: InferenceRequest) -> dict[str, Any]:
    """p50 ms of each two-stage step for one request, and its candidate count."""
    from skiprec.encoding import encode_exclusions, encode_sessions, feedback_code

    retrieval = model.retrieval
    assert retrieval is not None
    codes = [feedback_code(s, None, graded=model.spec.graded) for s in request.skipped]
    history = list(zip(model.vocab.indices(request.track_ids), codes, strict=True))
    item_ids, feedback = encode_sessions([history], model.spec)
    exclude = encode_exclusions([sorted(model.vocab.indices(request.excluded))])
    query, successors = retrieval.encode(item_ids, feedback)
    # At the request's depth, which this call also sets on the index for the bare
    # search below.
    found = retrieval.candidates(query, item_ids, successors, exclude, request.k)
    count = retrieval.spec.depth(request.k)[0] + len(request.excluded)
    stages: dict[str, Callable[[], object]] = {
        "query_graph": partial(retrieval.encode, item_ids, feedback),
        "ann_search": partial(retrieval.index.search, query, count, threads=1),
        "candidates": partial(
            retrieval.candidates, query, item_ids, successors, exclude, request.k
        ),
        "candidates_graph": partial(
            retrieval.score, query, item_ids, feedback, exclude, found
        ),
    }
    return {
        "stages_batch_1_p50_ms": {
            name: summarize_latencies(_time_calls(stage, 300, 10))["p50_ms"]
            for name, stage in stages.items()
        },
        "num_candidates": int(found.shape[1]),
    }


def redis_floor(url: str, iterations: int = 2000) -> dict[str, Any]:
    """One PING round trip to ``url`` with sync and asyncio redis-py clients."""
    import redis
    import redis.asyncio as aioredis

    client = redis.Redis.from_url(url)
    sync_stats = summarize_latencies(_time_calls(client.ping, iterations, 100))
    client.close()

    async def measure_async() -> list[float]:
        aclient = aioredis.Redis.from_url(url)
        for _ in range(100):
            await aclient.ping()
        samples = []
        for _ in range(iterations):
            start = time.perf_counter()
            await aclient.ping()
            samples.append(time.perf_counter() - start)
        await aclient.aclose()
        return samples

    async_stats = summarize_latencies(asyncio.run(measure_async()))
    return {"sync_ping": sync_stats, "async_ping": async_stats}
