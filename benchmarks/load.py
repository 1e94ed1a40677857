"""``skiprec bench``: load benchmark of the real service against a real Redis server.

    skiprec bench                      # full run, ~10 min: BENCHMARKS.md + bench.json
    skiprec bench --quick              # ~2 min, shorter phases, 10k/100k scaling only
    skiprec bench --profile /tmp/prof  # same phases, py-spy recording the service

What one run does, in order (docs/BENCHMARKS.md explains the method):

1. Builds (or takes from the cache) the synthetic bundles: d=64, L=50 SASRec with
   random weights over 100k tracks, plus 10k and 1M for the scaling table
   (``benchmarks/build_model.py``).
2. Starts ``redis-server`` on a free loopback port and measures the floors
   (``benchmarks/floors.py``): a Redis round trip, bare ONNX inference at batch 1 and
   batched, and a FastAPI no-op app under the service's uvicorn settings.
3. Starts the service (``skiprec serve``, a separate process) on loopback, fills
   Redis with users through ``POST /events`` (session lengths 1..200, median ~20),
   and drives it from a separate load-generator process (``benchmarks/loadgen.py``):
   ``GET /recommendations`` open loop at fixed rates and closed loop to saturation,
   ``POST /events`` with 1 and with 100 events per request; then latency vs session
   length and vs catalogue size.
4. Writes bench.json, the latency-vs-load PNG and the generated part of
   docs/BENCHMARKS.md (between the ``bench:begin``/``bench:end`` markers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks import floors, processes
from benchmarks.build_model import BenchModel, default_cache_dir, ensure_bundle
from benchmarks.report import machine_info, summarize, write_markdown

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = processes.HOST
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
    num_users: int = 5000
    users_per_length: int = 300
    workers: int = 2  # one per core: the event loop is GIL-bound at one core
    onnx_threads: int = 1
    top_k: int = 200  # model_export.export.DEFAULT_TOP_K, the API's max k
    bundle_dir: Path | None = None  # an existing bundle instead of a synthetic one
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


# --- processes ---------------------------------------------------------------------


def service_command(config: BenchConfig, bundle: Path) -> list[str]:
    """``skiprec serve`` as the benchmark runs it (workers from the config)."""
    return processes.serve_command(bundle, workers=config.workers)


def service_env(config: BenchConfig, redis_url: str) -> dict[str, str]:
    env = {"SKIPREC_ONNX_THREADS": str(config.onnx_threads), **dict(config.service_env)}
    return env | {"SKIPREC_REDIS_URL": redis_url}


def noop_command(config: BenchConfig) -> list[str]:
    """The no-op app under the uvicorn settings ``skiprec serve`` uses."""
    command = processes.uvicorn_command(
        "benchmarks.floors:noop_app", factory=True, workers=config.workers
    )
    return command + ["--loop", "uvloop", "--http", "httptools"]


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


def run_loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """One phase in a separate load-generator process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen"],
        input=json.dumps(spec).encode(),
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=spec["duration"] + spec.get("warmup", 1.0) + 120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _brief(result: dict[str, Any]) -> str:
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
        print(f"  {_brief(result)}", flush=True)
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


# --- the run -------------------------------------------------------------------------


def _bundle(config: BenchConfig, num_tracks: int) -> Path:
    if config.bundle_dir is not None and num_tracks == config.catalogue:
        return config.bundle_dir
    spec = BenchModel(num_tracks=num_tracks, top_k=config.top_k, seed=config.seed)
    print(f"bundle: {spec.key} (cache {config.cache_dir})", flush=True)
    return ensure_bundle(spec, config.cache_dir)


def _track_ids(bundle: Path) -> list[str]:
    payload = json.loads((bundle / "vocab.json").read_text())
    ids: list[str] = payload["track_ids"]
    return ids


def _floors(config: BenchConfig, bundle: Path, redis_url: str) -> dict[str, Any]:
    print("floors: redis round trip, bare ONNX inference", flush=True)
    out: dict[str, Any] = {"redis": floors.redis_floor(redis_url)}
    out["onnx"] = floors.onnx_floor(
        bundle,
        seconds_per_case=config.floor_seconds,
        intra_op_threads=config.onnx_threads,
    )
    print("floors: FastAPI no-op under the same uvicorn settings", flush=True)
    assert config.work_dir is not None
    log = config.work_dir / "noop.log"
    with processes.http_server(
        noop_command(config), log, ready_path="/noop", timeout_s=60
    ) as noop:
        phases = Phases(config, noop.port, {"service": noop.pid})
        out["noop"] = {
            "rate_500": phases.run("noop", "open", rate=TARGET_RATE),
            "closed": phases.run(
                "noop", "closed", concurrency=max(config.concurrencies)
            ),
        }
    return out


def _overloaded(result: dict[str, Any]) -> bool:
    """An open-loop phase the server could not keep up with."""
    return bool(result["throughput_rps"] < 0.9 * result["offered_rps"])


def _recommendation_phases(
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
        if _overloaded(result) and rate >= TARGET_RATE:
            break  # higher rates would only queue
    print("GET /recommendations, closed loop", flush=True)
    for concurrency in config.concurrencies:
        result = phases.run(
            "recommendations", "closed", concurrency=concurrency, users=users
        )
        out["closed"].append(result)
    clean = [r["throughput_rps"] for r in out["closed"] if r["errors"] == 0]
    out["saturation_rps"] = max(clean, default=0.0)
    return out


def _event_phases(
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
        if _overloaded(out["single"][-1]):
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


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Run everything ``config`` asks for; the results as one JSON-able dict."""
    started = time.time()
    with contextlib.ExitStack() as stack:
        if config.work_dir is None:
            tmp = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="skiprec-bench-")
            )
            config = replace(config, work_dir=Path(tmp))
        assert config.work_dir is not None
        config.work_dir.mkdir(parents=True, exist_ok=True)
        bundle = _bundle(config, config.catalogue)
        track_ids = _track_ids(bundle)
        results: dict[str, Any] = {
            "config": _jsonable(asdict(config)),
            "machine": machine_info(),
        }
        store = stack.enter_context(processes.redis_server(config.work_dir / "redis"))
        redis_url, redis_pid = store.url, store.pid
        if config.floors:
            results["floors"] = _floors(config, bundle, redis_url)
        args = service_command(config, bundle)
        env = service_env(config, redis_url)
        log = config.work_dir / "service.log"
        print(f"service: {' '.join(args)}", flush=True)
        with processes.http_server(args, log, env=env, timeout_s=180) as service:
            port, pid, base_url = service.port, service.pid, service.base_url
            rng = random.Random(config.seed)
            population = populate(base_url, config, track_ids, rng)
            print(
                f"populated {len(population.users)} users + length groups with "
                f"{population.num_events} events in {population.seconds:.1f}s",
                flush=True,
            )
            results["population"] = {
                "users": len(population.users),
                "users_per_length": config.users_per_length,
                "events": population.num_events,
                "seconds": population.seconds,
            }
            phases = Phases(config, port, {"service": pid, "redis": redis_pid})
            results["recommendations"] = _recommendation_phases(
                config, phases, population.users, pid
            )
            print("latency vs session length", flush=True)
            results["session_length"] = {
                str(length): phases.run(
                    "recommendations", "open", rate=config.scaling_rate, users=users
                )
                for length, users in population.by_length.items()
            }
            results["events"] = _event_phases(
                config, phases, population.users, track_ids, pid
            )
        results["catalogue"] = _catalogue_scaling(
            config, redis_url, redis_pid, population.users, bundle
        )
    results["summary"] = summarize(results)
    results["elapsed_s"] = time.time() - started
    return results


def _catalogue_scaling(
    config: BenchConfig,
    redis_url: str,
    redis_pid: int,
    users: tuple[str, ...],
    main_bundle: Path,
) -> dict[str, Any]:
    """Latency at a fixed rate vs catalogue size; the users' stored sessions are
    reused (track ids outside a smaller catalogue are OOV, as for a real model)."""
    out: dict[str, Any] = {}
    assert config.work_dir is not None
    for num_tracks in config.scaling_catalogues:
        bundle = (
            main_bundle
            if num_tracks == config.catalogue
            else _bundle(config, num_tracks)
        )
        print(f"catalogue {num_tracks}", flush=True)
        entry: dict[str, Any] = {
            "onnx": floors.onnx_floor(
                bundle,
                batch_sizes=(1, 8),
                seconds_per_case=min(0.7, config.floor_seconds),
                intra_op_threads=config.onnx_threads,
            )
        }
        args = service_command(config, bundle)
        env = service_env(config, redis_url)
        log = config.work_dir / f"service-{num_tracks}.log"
        with processes.http_server(args, log, env=env, timeout_s=300) as service:
            watch = {"service": service.pid, "redis": redis_pid}
            phases = Phases(config, service.port, watch)
            entry["open"] = phases.run(
                "recommendations", "open", rate=config.scaling_rate, users=users
            )
        out[str(num_tracks)] = entry
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- CLI -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec bench", description="Load benchmark of the skiprec service."
    )
    # what to run
    parser.add_argument("--quick", action="store_true", help="~2 min instead of ~10")
    parser.add_argument("--catalogue", type=int, help="tracks of the main bundle")
    parser.add_argument("--duration", type=float, help="seconds of the 500 req/s phase")
    parser.add_argument("--phase-duration", type=float, help="seconds of other phases")
    parser.add_argument("--rates", type=float, nargs="+", help="open-loop req/s")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling")
    parser.add_argument("--no-floors", action="store_true", help="skip the floors")
    parser.add_argument("--bundle", type=Path, help="an existing bundle to serve")
    # the service
    parser.add_argument("--workers", type=int, help="uvicorn workers (default 2)")
    parser.add_argument("--onnx-threads", type=int, help="SKIPREC_ONNX_THREADS")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service, e.g. SKIPREC_MAX_INFERENCE_BATCH=32",
    )
    # outputs
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "docs/results/bench.json",
        help="the results JSON",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=REPO_ROOT / "docs/BENCHMARKS.md",
        help="markdown whose bench:begin/end block is regenerated",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=REPO_ROOT / "docs/results/bench_latency.png",
        help="the latency-vs-load PNG",
    )
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles go here")
    parser.add_argument("--work-dir", type=Path, help="logs (default: a temp dir)")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    changes: dict[str, Any] = {}
    for key, attr in (
        ("catalogue", "catalogue"),
        ("target_duration", "duration"),
        ("phase_duration", "phase_duration"),
        ("workers", "workers"),
        ("onnx_threads", "onnx_threads"),
        ("bundle_dir", "bundle"),
        ("profile_dir", "profile"),
        ("work_dir", "work_dir"),
    ):
        if getattr(args, attr) is not None:
            changes[key] = getattr(args, attr)
    if args.rates:
        changes["rates"] = tuple(args.rates)
    if args.no_scaling:
        changes["scaling_catalogues"] = ()
    if args.no_floors:
        changes["floors"] = False
    if args.env:
        pairs = [item.partition("=") for item in args.env]
        changes["service_env"] = tuple((key, value) for key, _, value in pairs)
    return (
        BenchConfig.quick(**changes)
        if args.quick
        else replace(BenchConfig(), **changes)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    command = "skiprec bench " + " ".join(sys.argv[2:] if argv is None else argv)
    results = run_benchmark(config)
    results["command"] = command.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    from benchmarks.plot import plot_latency

    plot_latency(results, args.plot)
    write_markdown(results, args.markdown)
    print(f"wrote {args.out}, {args.plot}, {args.markdown}", flush=True)
    for line in results["summary"]["targets_table"]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
