"""CPU per recommendation, per thread, at several loads (the low-load CPU per request).

    python -m benchmarks.thread_cpu --bundle BUNDLE [--workers 2] [--env KEY=VALUE]

Starts a ``redis-server`` and ``skiprec serve``, gives ``--users`` listeners the
loadtest's sessions (``benchmarks.phases.populate``: lognormal, median 20 events),
then offers each load of ``--loads`` (``open:100`` = 100 req/s open
loop, ``closed:8`` = 8 connections) with the project's load generator. Around each
phase it reads the user + system time of every thread of the service from
``/proc`` (psutil): each worker's event loop (its main thread) and the rest (the
inference thread; ONNX Runtime runs in it with one intra-op thread). CPU over
requests answered, load generator start-up included (the service idles then), and
each phase's latency (from the scheduled send time in an open loop).

``--profile DIR`` also records each phase with py-spy (``DIR/<load>.txt``: collapsed
stacks, one line per stack and thread, as ``py-spy record --format raw`` writes
them), the profile behind "where the time goes" in docs/BENCHMARKS.md. py-spy
samples from outside the process but still costs the workers some time, so the CPU
figures of a profiled run are not the run's figures of record.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks.phases import BenchConfig, populate, run_loadgen
from benchmarks.processes import (
    HOST,
    http_server,
    redis_server,
    serve_command,
    service_env,
)


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process tree's threads: ``loop`` (each process's main
    thread) and ``other``."""
    totals = {"loop": 0.0, "other": 0.0}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        for thread in process.threads():
            kind = "loop" if thread.id == process.pid else "other"
            totals[kind] += thread.user_time + thread.system_time
    return totals


def py_spy(pid: int, out_dir: Path, load: str) -> subprocess.Popen[bytes]:
    """py-spy sampling every worker of ``pid`` (its subprocesses) until SIGINT."""
    binary = shutil.which("py-spy")
    if binary is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = load.replace(":", "_")
    command = [binary, "record", "--pid", str(pid), "--subprocesses", "--threads"]
    command += ["--rate", "250", "--format", "raw", "--nonblocking"]
    command += ["--output", str(out_dir / f"{name}.txt")]
    log = (out_dir / f"{name}.log").open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def measure(
    bundle: Path,
    workers: int,
    loads: Sequence[str],
    users: int,
    seconds: float,
    env: dict[str, str],
    profile: Path | None = None,
) -> list[dict[str, Any]]:
    tracks = json.loads((bundle / "vocab.json").read_text())["track_ids"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis:
        with http_server(
            serve_command(bundle, workers=workers),
            Path(tmp) / "service.log",
            ready_path="/readyz",
            env={**service_env(bundle, redis.url), **env},
        ) as server:
            population = populate(
                server.base_url,
                BenchConfig(num_users=users, session_lengths=()),
                tracks,
                random.Random(0),
            )
            for load in loads:
                mode, _, value = load.partition(":")
                spec: dict[str, Any] = {
                    "host": HOST,
                    "port": server.port,
                    "scenario": "recommendations",
                    "mode": mode,
                    "duration": seconds,
                    "warmup": 0.0,
                    "users": population.users,
                }
                if mode == "open":
                    spec["rate"] = float(value)
                else:
                    spec["concurrency"] = int(value)
                sampler = None if profile is None else py_spy(server.pid, profile, load)
                before = thread_seconds(server.pid)
                result = run_loadgen(spec)
                after = thread_seconds(server.pid)
                if sampler is not None:
                    sampler.send_signal(signal.SIGINT)  # py-spy writes its file then
                    sampler.wait(timeout=60)
                answered = result["status_counts"].get("200", 0)
                row = {
                    "load": load,
                    "requests": answered,
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                }
                for kind in before:
                    row[f"{kind}_cpu_ms_per_request"] = (
                        (after[kind] - before[kind]) / max(answered, 1) * 1e3
                    )
                row["cpu_ms_per_request"] = (
                    row["loop_cpu_ms_per_request"] + row["other_cpu_ms_per_request"]
                )
                rows.append(row)
                print(
                    f"{load:>10}: {answered:6d} answered, service "
                    f"{row['cpu_ms_per_request']:.3f} ms/request: inference and other "
                    f"threads {row['other_cpu_ms_per_request']:.3f}, event loops "
                    f"{row['loop_cpu_ms_per_request']:.3f}; latency p50 "
                    f"{row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms",
                    flush=True,
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--loads", nargs="+", default=["open:100", "open:250", "open:500", "closed:8"]
    )
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    rows = measure(
        args.bundle,
        args.workers,
        args.loads,
        args.users,
        args.seconds,
        env,
        args.profile,
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
