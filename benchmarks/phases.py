"""The measured phases of one ``skiprec loadtest`` run, and the knobs that size them.

:class:`BenchConfig` holds every knob (the CLI in ``benchmarks/load.py`` builds it).
:class:`Phases` runs one load phase in a separate load-generator process
(``python -m benchmarks.loadgen``, a JSON spec on stdin, a JSON result on stdout);
:func:`start_loadgen`/:func:`collect_loadgen` do the same for callers that run several
generators at once (the soak). :func:`populate` creates the users' sessions through
``POST /events``; :func:`recommendation_phases` and :func:`event_phases` are the
``GET /recommendations`` and ``POST /events`` sweeps; :func:`profiler` records the
service with py-spy while a phase runs, when asked.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.build_model import default_cache_dir
from benchmarks.processes import HOST, REPO_ROOT

TARGET_RATE = 500.0  # the target: p50 <= 3 ms, p99 <= 15 ms at 500 req/s


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of one run; the CLI builds it, ``--quick`` swaps in short phases."""

    catalogue: int = 100_000
    scaling_catalogues: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    session_lengths: tuple[int, ...] = (20, 50, 200)
    target_duration: float = 60.0  # GET /recommendations at TARGET_RATE
    phase_duration: float = 10.0  # every other measured phase
    warmup: float = 2.0
    rates: tuple[float, ...] = (100, 250, 500, 1000, 1500, 2000)
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    event_rates: tuple[float, ...] = (1000, 3000)
    event_concurrencies: tuple[int, ...] = (8, 32)
    batch_concurrencies: tuple[int, ...] = (2, 8)
    scaling_rate: float = 200.0
    overload_factor: float = 3.0  # x saturation, open loop; 0 = no overload phase
    num_users: int = 5000
    users_per_length: int = 300
    workers: int = 2  # one per core: the event loop is GIL-bound at one core
    onnx_threads: int = 1
    top_k: int = 200  # model_export.export.DEFAULT_TOP_K, the API's max k
    bundle_dir: Path | None = None  # an existing bundle instead of a synthetic one
    source_run: Path | None = None  # a trained run for the synthetic bundles
    parity_data: Path | None = None  # its session log (export parity sessions)
    two_stage: bool = False  # bundles with the ANN index (benchmarks/build_model.py)
    cache_dir: Path = field(default_factory=default_cache_dir)
    work_dir: Path | None = None  # logs and Redis data; default a temp dir
    service_env: tuple[tuple[str, str], ...] = ()
    profile_dir: Path | None = None
    floors: bool = True
    floor_seconds: float = 2.0  # timing budget per bare-ONNX batch size
    seed: int = 0

    @classmethod
    def quick(cls, **changes: Any) -> BenchConfig:
        return replace(
            cls(
                scaling_catalogues=(10_000, 100_000),
                session_lengths=(20, 200),
                target_duration=10.0,
                phase_duration=4.0,
                warmup=1.0,
                rates=(250, 500, 1000),
                concurrencies=(8, 32),
                event_rates=(),
                event_concurrencies=(16,),
                batch_concurrencies=(4,),
                num_users=2000,
                users_per_length=100,
                floor_seconds=0.7,
            ),
            **changes,
        )


@contextlib.contextmanager
def profiler(
    config: BenchConfig, pid: int, name: str, seconds: float
) -> Iterator[None]:
    """py-spy recording of the service tree while the block runs (when asked)."""
    if config.profile_dir is None:
        yield
        return
    config.profile_dir.mkdir(parents=True, exist_ok=True)
    out = config.profile_dir / f"{name}.txt"
    args = ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--rate", "200"]
    args += ["--format", "raw", "--duration", str(math.ceil(seconds)), "-o", str(out)]
    args += ["--nonblocking", "--threads"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- the load generator ------------------------------------------------------------


def start_loadgen(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start one load-generator process on ``spec``; collect it with
    :func:`collect_loadgen`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.loadgen"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch the closed pipe again
    return proc


def collect_loadgen(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """Wait for a load generator (killed after ``timeout_s``); its JSON result."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def run_loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """One phase in a separate load-generator process; its JSON result."""
    timeout_s = spec["duration"] + spec.get("warmup", 1.0) + 120
    return collect_loadgen(start_loadgen(spec), timeout_s)


def brief(result: dict[str, Any]) -> str:
    cpu = " ".join(f"{k}={v:.0f}%" for k, v in result.get("cpu_percent", {}).items())
    load = (
        f"offered {result['offered_rps']:.0f}/s"
        if result["mode"] == "open"
        else f"c={result['concurrency']}"
    )
    return (
        f"{result['scenario']:<15} b={result['batch_size']:<3} {load:<14} "
        f"{result['throughput_rps']:8.0f} req/s  p50 {result['p50_ms']:7.2f}  "
        f"p99 {result['p99_ms']:8.2f}  max {result['max_ms']:8.1f} ms  "
        f"err {result['errors']}  cpu {cpu}"
    )


class Phases:
    """Runs load phases against one server and collects their results."""

    def __init__(self, config: BenchConfig, port: int, watch: dict[str, int]) -> None:
        self.config = config
        self.port = port
        self.watch = watch

    def run(
        self, scenario: str, mode: str, duration: float | None = None, **spec: Any
    ) -> dict[str, Any]:
        full = {
            "host": HOST,
            "port": self.port,
            "scenario": scenario,
            "mode": mode,
            "duration": duration or self.config.phase_duration,
            "warmup": self.config.warmup,
            "watch_pids": self.watch,
            "seed": self.config.seed,
            **spec,
        }
        result = run_loadgen(full)
        result.pop("spec", None)
        print(f"  {brief(result)}", flush=True)
        return result


# --- users ---------------------------------------------------------------------------


def zipf_tracks(track_ids: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """``count`` draws from the catalogue, rank-frequency ~ 1/rank^0.8 (vocab order
    is most popular first), so sessions and posted events look like listening."""
    n = len(track_ids)
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(n)]
    return rng.choices(track_ids, weights=weights, k=count)


@dataclass(frozen=True)
class Population:
    users: tuple[str, ...]  # the general population (GET and POST target these)
    by_length: dict[int, tuple[str, ...]]  # users whose session has exactly N events
    num_events: int
    seconds: float


def populate(
    base_url: str, config: BenchConfig, track_ids: Sequence[str], rng: random.Random
) -> Population:
    """Create every user's session through ``POST /events`` (batches of <= 1000)."""
    sessions: dict[str, int] = {}
    for i in range(config.num_users):
        # lognormal, median 20 events, clipped to 1..200
        length = int(min(200, max(1, round(rng.lognormvariate(math.log(20), 0.9)))))
        sessions[f"user{i:06d}"] = length
    by_length: dict[int, tuple[str, ...]] = {}
    for length in config.session_lengths:
        group = tuple(f"len{length}-{j:04d}" for j in range(config.users_per_length))
        by_length[length] = group
        sessions.update(dict.fromkeys(group, length))
    pool = zipf_tracks(track_ids, 20_000, rng)
    started = time.perf_counter()
    batch: list[dict[str, str]] = []
    total = 0
    with httpx.Client(base_url=base_url, timeout=60.0) as client:

        def flush() -> None:
            response = client.post("/events", json={"events": batch})
            response.raise_for_status()
            batch.clear()

        for user, length in sessions.items():
            if len(batch) + length > 1000:
                flush()
            for _ in range(length):
                kind = "skip" if rng.random() < 0.3 else "play"
                batch.append(
                    {"user_id": user, "track_id": rng.choice(pool), "type": kind}
                )
            total += length
        if batch:
            flush()
    return Population(
        tuple(u for u in sessions if u.startswith("user")),
        by_length,
        total,
        time.perf_counter() - started,
    )


# --- the sweeps -----------------------------------------------------------------------


def overloaded(result: dict[str, Any]) -> bool:
    """An open-loop phase the server could not keep up with."""
    return bool(result["throughput_rps"] < 0.9 * result["offered_rps"])


def recommendation_phases(
    config: BenchConfig, phases: Phases, users: tuple[str, ...], pid: int
) -> dict[str, Any]:
    print("GET /recommendations, open loop", flush=True)
    out: dict[str, Any] = {"open": [], "closed": []}
    for rate in config.rates:
        target = rate == TARGET_RATE
        duration = config.target_duration if target else config.phase_duration
        with (
            profiler(config, pid, "recommendations_rate_500", duration)
            if target
            else contextlib.nullcontext()
        ):
            result = phases.run(
                "recommendations", "open", duration, rate=rate, users=users
            )
        out["open"].append(result)
        if target:
            out["rate_500"] = result
        if overloaded(result) and rate >= TARGET_RATE:
            break  # higher rates would only queue
    print("GET /recommendations, closed loop", flush=True)
    for concurrency in config.concurrencies:
        result = phases.run(
            "recommendations", "closed", concurrency=concurrency, users=users
        )
        out["closed"].append(result)
    clean = [r["throughput_rps"] for r in out["closed"] if r["errors"] == 0]
    out["saturation_rps"] = max(clean, default=0.0)
    if out["saturation_rps"] and config.overload_factor:
        # Past saturation the service must shed, not queue: what was admitted keeps
        # its latency, the rest is refused fast (loadgen's admitted / shed split).
        rate = config.overload_factor * out["saturation_rps"]
        print(f"GET /recommendations, overload at {rate:.0f} req/s", flush=True)
        out["overload"] = phases.run("recommendations", "open", rate=rate, users=users)
    return out


def event_phases(
    config: BenchConfig,
    phases: Phases,
    users: tuple[str, ...],
    track_ids: Sequence[str],
    pid: int,
) -> dict[str, Any]:
    rng = random.Random(config.seed + 1)
    tracks = zipf_tracks(track_ids, 10_000, rng)
    common: dict[str, Any] = {"users": users, "track_ids": tracks}
    out: dict[str, Any] = {"single": [], "batch": []}
    print("POST /events, 1 event per request", flush=True)
    for rate in config.event_rates:
        out["single"].append(phases.run("events", "open", rate=rate, **common))
        if overloaded(out["single"][-1]):
            break
    for concurrency in config.event_concurrencies:
        with profiler(
            config, pid, f"events_single_c{concurrency}", config.phase_duration
        ):
            result = phases.run("events", "closed", concurrency=concurrency, **common)
        out["single"].append(result)
    print("POST /events, 100 events per request", flush=True)
    for concurrency in config.batch_concurrencies:
        with profiler(
            config, pid, f"events_batch_c{concurrency}", config.phase_duration
        ):
            result = phases.run(
                "events", "closed", concurrency=concurrency, batch_size=100, **common
            )
        out["batch"].append(result)

    def best(results: list[dict[str, Any]]) -> float:
        clean = [r["events_per_s"] for r in results if r["errors"] == 0]
        return max(clean, default=0.0)

    out["single_eps"] = best(out["single"])
    out["batch_eps"] = best(out["batch"])
    return out
