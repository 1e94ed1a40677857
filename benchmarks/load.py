"""``skiprec loadtest``: load benchmark of the real service against a real Redis server.

    skiprec loadtest                      # full run: BENCHMARKS.md + bench.json
    skiprec loadtest --quick              # shorter phases, 10k/100k scaling only
    skiprec loadtest --profile /tmp/prof  # same phases, py-spy recording the service

What one run does, in order (docs/BENCHMARKS.md explains the method and the run
times):

1. Builds (or takes from the cache) the synthetic bundles: the main catalogue plus the
   scaling catalogues (``benchmarks/build_model.py``).
2. Starts ``redis-server`` on a free loopback port (``benchmarks/processes.py``) and
   measures the floors (``benchmarks/floors.py``): a Redis round trip, bare ONNX
   inference at batch 1 and batched, and a FastAPI no-op app under the service's
   uvicorn settings.
3. Starts the service (``skiprec serve``, a separate process) on loopback, fills
   Redis with users through ``POST /events`` and runs the phases of
   ``benchmarks/phases.py``, each from a separate load-generator process
   (``benchmarks/loadgen.py``): ``GET /recommendations`` open loop at fixed rates and
   closed loop to saturation, ``POST /events`` with 1 and with 100 events per
   request; then latency vs session length and vs catalogue size.
4. Writes bench.json, the latency-vs-load PNG and the generated part of
   docs/BENCHMARKS.md (between the ``bench:begin``/``bench:end`` markers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks import floors, probes, processes
from benchmarks.build_model import BenchModel, ensure_bundle
from benchmarks.phases import (
    TARGET_RATE,
    BenchConfig,
    Phases,
    event_phases,
    populate,
    recommendation_phases,
)
from benchmarks.report import machine_info, write_markdown
from benchmarks.summary import summarize
from skiprec.manifest import MANIFEST_FILE, RetrievalSpec

REPO_ROOT = processes.REPO_ROOT
COMMAND = "skiprec loadtest"


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


# --- the run -------------------------------------------------------------------------


def _bundle(config: BenchConfig, num_tracks: int) -> Path:
    if config.bundle_dir is not None and num_tracks == config.catalogue:
        return config.bundle_dir
    spec = BenchModel(
        num_tracks=num_tracks,
        top_k=config.top_k,
        seed=config.seed,
        source_run=str(config.source_run) if config.source_run else "",
        two_stage=config.two_stage,
        parity_data=str(config.parity_data) if config.parity_data else "",
    )
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
            results["recommendations"] = recommendation_phases(
                config, phases, population.users, pid
            )
            print("latency vs session length", flush=True)
            results["session_length"] = {
                str(length): phases.run(
                    "recommendations", "open", rate=config.scaling_rate, users=users
                )
                for length, users in population.by_length.items()
            }
            results["events"] = event_phases(
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
    """Latency at a fixed rate vs catalogue size, for each way the bundle can rank
    (whole catalogue, and two stages when it has an index), with the model step's
    cost, the bundle's size and each worker's memory; the users' stored sessions are
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
        model = floors.model_floor(
            bundle,
            seconds_per_case=min(0.7, config.floor_seconds),
            intra_op_threads=config.onnx_threads,
        )
        entry: dict[str, Any] = {
            "bundle_bytes": sum(f.stat().st_size for f in bundle.iterdir()),
            "model": model,
            "retrieval": _manifest_retrieval(bundle),
        }
        for mode in model["modes"]:
            retrieval = "exact" if mode == "exact" else "auto"
            env = service_env(config, redis_url) | {"SKIPREC_RETRIEVAL": retrieval}
            log = config.work_dir / f"service-{num_tracks}-{mode}.log"
            with processes.http_server(
                service_command(config, bundle), log, env=env, timeout_s=300
            ) as service:
                watch = {"service": service.pid, "redis": redis_pid}
                phases = Phases(config, service.port, watch)
                result = phases.run(
                    "recommendations", "open", rate=config.scaling_rate, users=users
                )
                result["worker_rss_bytes"] = probes.worker_rss(service.pid)
            entry[mode] = result
        out[str(num_tracks)] = entry
    return out


def _manifest_retrieval(bundle: Path) -> dict[str, Any] | None:
    """The bundle's two-stage record (recall against full scoring), if any, with
    the recall@10 of the search the load's k=10 requests get."""
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    retrieval: dict[str, Any] | None = manifest.get("retrieval")
    if retrieval is not None:
        spec = RetrievalSpec.model_validate(retrieval)
        retrieval["served_recall_at_10"] = spec.served_recall_at_10()
    return retrieval


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
        prog=COMMAND, description="Load benchmark of the skiprec service."
    )
    # what to run
    parser.add_argument(
        "--quick", action="store_true", help="short phases, 10k/100k scaling only"
    )
    parser.add_argument("--catalogue", type=int, help="tracks of the main bundle")
    parser.add_argument("--duration", type=float, help="seconds of the 500 req/s phase")
    parser.add_argument("--phase-duration", type=float, help="seconds of other phases")
    parser.add_argument("--rates", type=float, nargs="+", help="open-loop req/s")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling")
    parser.add_argument(
        "--catalogues",
        type=int,
        nargs="+",
        help="scaling rows' catalogue sizes (default 10k 100k 1M; quick 10k 100k)",
    )
    parser.add_argument("--no-floors", action="store_true", help="skip the floors")
    parser.add_argument("--bundle", type=Path, help="an existing bundle to serve")
    parser.add_argument(
        "--from-run",
        type=Path,
        help="bundles from this trained run (larger catalogues extend its table) "
        "instead of random weights",
    )
    parser.add_argument(
        "--data", type=Path, help="the run's session log, for parity sessions"
    )
    parser.add_argument(
        "--two-stage",
        action="store_true",
        help="bundles with the ANN index: the main phases run two-stage, and each "
        "catalogue size is measured both ways",
    )
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
        ("source_run", "from_run"),
        ("parity_data", "data"),
        ("profile_dir", "profile"),
        ("work_dir", "work_dir"),
    ):
        if getattr(args, attr) is not None:
            changes[key] = getattr(args, attr)
    if args.rates:
        changes["rates"] = tuple(args.rates)
    if args.catalogues:
        changes["scaling_catalogues"] = tuple(args.catalogues)
    if args.no_scaling:
        changes["scaling_catalogues"] = ()
    if args.two_stage:
        changes["two_stage"] = True
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
    command = f"{COMMAND} " + " ".join(sys.argv[2:] if argv is None else argv)
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
