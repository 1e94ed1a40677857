"""The floors: what the service's parts cost on their own, measured in the same run.

- :func:`onnx_floor` — bare ONNX Runtime inference of the bundle's graph, batch 1 and
  batched, with the same thread settings the service uses.
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
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import summarize_latencies


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

        single = _time_calls(call, 3, 2)
        iterations = max(
            5, min(2000, int(seconds_per_case / max(np.median(single), 1e-6)))
        )
        stats = summarize_latencies(_time_calls(call, iterations, 0))
        stats["per_request_ms"] = stats["p50_ms"] / batch
        stats["iterations"] = iterations
        out["batches"][str(batch)] = stats
    return out


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
