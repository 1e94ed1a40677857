"""Soak test: minutes of mixed load at half of saturation; errors and memory over time.

    python -m benchmarks.soak --minutes 10     # the run of record, docs/RELIABILITY.md
    python -m benchmarks.soak --minutes 1 --out /tmp/soak.json

Starts ``redis-server`` (AOF everysec, as compose ships it) and the service
(``skiprec serve``, its own process) on the benchmark bundle (100k tracks, built or
taken from the bench cache), creates 1,000 users' sessions, then drives three
open-loop load generators at once (``benchmarks/loadgen.py`` processes), window after
window: ``GET /recommendations``, ``POST /events`` with one event, and ``POST
/events`` with 100 events. Rates are half of the saturation throughputs of
docs/results/bench.json (``skiprec loadtest``), the budget split 60/30/10 between the
three; ``--saturation-from measure`` measures them first (10 s closed loop each).
Every window reports its errors (transport errors, non-2xx, degraded fallbacks) and
latency; the service's resident memory (process tree) is sampled every 5 s.
Writes a JSON report and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import processes
from benchmarks.build_model import BenchModel, default_cache_dir, ensure_bundle
from benchmarks.phases import collect_loadgen, start_loadgen, zipf_tracks
from benchmarks.probes import RssSampler
from benchmarks.processes import HOST, REPO_ROOT

BENCH_JSON = REPO_ROOT / "docs" / "results" / "bench.json"
WINDOW_S = 30.0
NUM_USERS = 1000
EVENTS_PER_USER = 20
BATCH_SIZE = 100
WORKERS = 2  # as in `skiprec loadtest`, whose saturation figures set the soak rates
# The three generators: loadgen scenario (and batch size) of each soak workload.
WORKLOADS: dict[str, dict[str, Any]] = {
    "recommendations": {"scenario": "recommendations"},
    "events": {"scenario": "events"},
    "batches": {"scenario": "events", "batch_size": BATCH_SIZE},
}
SHARES = {"recommendations": 0.6, "events": 0.3, "batches": 0.1}


@dataclass(frozen=True)
class Saturation:
    recommendations_rps: float
    events_rps: float  # POST /events with one event
    batch_events_per_s: float  # POST /events with 100 events, in events


def saturation_from_bench(path: Path) -> Saturation:
    summary = {
        t["target"]: t["measured"]
        for t in json.loads(path.read_text())["summary"]["targets"]
    }
    return Saturation(
        summary["GET /recommendations saturation (req/s)"],
        summary["POST /events, 1 event/request (events/s)"],
        summary["POST /events, 100 events/request (events/s)"],
    )


def _spec(
    port: int, pid: int, users: Sequence[str], tracks: Sequence[str], **kw: Any
) -> dict[str, Any]:
    return {
        "host": HOST,
        "port": port,
        "users": list(users),
        "track_ids": list(tracks),
        "watch_pids": {"service": pid},
        "warmup": 0.5,
        "drain_timeout": 10.0,
        **kw,
    }


def measure_saturation(
    port: int, pid: int, users: Sequence[str], tracks: Sequence[str]
) -> Saturation:
    def closed(scenario: str, batch: int) -> float:
        spec = _spec(
            port,
            pid,
            users,
            tracks,
            scenario=scenario,
            mode="closed",
            concurrency=16,
            duration=10.0,
            batch_size=batch,
        )
        result = collect_loadgen(start_loadgen(spec), WINDOW_S + 120)
        return float(result["throughput_rps"]) * batch

    return Saturation(
        closed("recommendations", 1), closed("events", 1), closed("events", BATCH_SIZE)
    )


def _window_errors(result: dict[str, Any]) -> int:
    """The load generator's count: transport errors, non-2xx and degraded fallbacks."""
    return int(result["errors"])


def run_soak(
    minutes: float, saturation_from: str, fraction: float, out: Path
) -> dict[str, Any]:
    bundle = ensure_bundle(BenchModel(), default_cache_dir())
    tracks = json.loads((bundle / "vocab.json").read_text())["track_ids"]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="skiprec-soak-") as tmp:
        work = Path(tmp)
        # The compose file's persistence (AOF, fsync every second), on a throwaway
        # server; the service with the worker count saturation was measured with.
        with (
            processes.redis_server(work / "redis", appendonly=True) as store,
            processes.http_server(
                processes.serve_command(bundle, workers=WORKERS),
                work / "api.log",
                env={"SKIPREC_REDIS_URL": store.url},
                timeout_s=120,
            ) as service,
        ):
            port, pid = service.port, service.pid
            users = [f"soak{i:05d}" for i in range(NUM_USERS)]
            pool = zipf_tracks(tracks, 20_000, rng)
            with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=60) as client:
                for start in range(0, NUM_USERS, 50):
                    events = [
                        {
                            "user_id": u,
                            "track_id": rng.choice(pool),
                            "type": "skip" if rng.random() < 0.3 else "play",
                        }
                        for u in users[start : start + 50]
                        for _ in range(EVENTS_PER_USER)
                    ]
                    client.post("/events", json={"events": events}).raise_for_status()
            if saturation_from == "bench":
                saturation = saturation_from_bench(BENCH_JSON)
            else:
                saturation = measure_saturation(port, pid, users, pool)
            rates = {
                "recommendations": fraction
                * SHARES["recommendations"]
                * saturation.recommendations_rps,
                "events": fraction * SHARES["events"] * saturation.events_rps,
                "batches": fraction
                * SHARES["batches"]
                * saturation.batch_events_per_s
                / BATCH_SIZE,
            }
            print(
                f"saturation {asdict(saturation)}; rates (req/s) {rates}",
                flush=True,
            )
            sampler = RssSampler(pid)
            windows: list[dict[str, Any]] = []
            deadline = time.monotonic() + minutes * 60
            index = 0
            while time.monotonic() + 1 < deadline:
                duration = min(WINDOW_S, deadline - time.monotonic())
                common = {"mode": "open", "duration": duration, "seed": index}
                procs = {
                    name: start_loadgen(
                        _spec(
                            port,
                            pid,
                            users,
                            pool,
                            rate=rates[name],
                            **workload,
                            **common,
                        )
                    )
                    for name, workload in WORKLOADS.items()
                }
                results = {
                    name: collect_loadgen(proc, WINDOW_S + 120)
                    for name, proc in procs.items()
                }
                window: dict[str, Any] = {
                    "index": index,
                    "rss_mib": sampler.rss() / 2**20,
                    **{
                        name: {
                            "requests": r["requests"],
                            "errors": _window_errors(r),
                            "throughput_rps": r["throughput_rps"],
                            "p50_ms": r["p50_ms"],
                            "p99_ms": r["p99_ms"],
                            "max_ms": r["max_ms"],
                            "status_counts": r["status_counts"],
                            "error_kinds": r["error_kinds"],
                            "fallbacks": r["fallbacks"],
                        }
                        for name, r in results.items()
                    },
                }
                windows.append(window)
                print(
                    f"window {index}: rss {window['rss_mib']:.1f} MiB; "
                    + "; ".join(
                        f"{name} {w['requests']} req, {w['errors']} errors, "
                        f"p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms"
                        for name, w in ((n, window[n]) for n in results)
                    ),
                    flush=True,
                )
                index += 1
            sampler.stop()
    rss = [value for _, value in sampler.samples]
    report = {
        "command": " ".join(["python -m benchmarks.soak", *sys.argv[1:]]),
        "minutes": minutes,
        "fraction_of_saturation": fraction,
        "saturation": asdict(saturation),
        "saturation_from": saturation_from,
        "rates_rps": rates,
        "bundle": bundle.name,
        "requests": {
            name: sum(w[name]["requests"] for w in windows) for name in SHARES
        },
        "errors": {name: sum(w[name]["errors"] for w in windows) for name in SHARES},
        "rss_mib": {
            "start": rss[0] / 2**20,
            "end": rss[-1] / 2**20,
            "max": max(rss) / 2**20,
            "samples": [(round(t, 1), round(v / 2**20, 2)) for t, v in sampler.samples],
        },
        "windows": windows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="length of the measured load"
    )
    parser.add_argument(
        "--fraction", type=float, default=0.5, help="share of saturation to offer"
    )
    parser.add_argument(
        "--saturation-from",
        choices=("bench", "measure"),
        default="bench" if BENCH_JSON.exists() else "measure",
        help="docs/results/bench.json, or a 10 s closed-loop measurement per scenario",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "docs" / "results" / "soak.json",
        help="JSON report",
    )
    args = parser.parse_args(argv)
    report = run_soak(args.minutes, args.saturation_from, args.fraction, args.out)
    rss = report["rss_mib"]
    print(
        f"requests {report['requests']}; errors {report['errors']}; "
        f"rss start {rss['start']:.1f} MiB, "
        f"end {rss['end']:.1f} MiB, max {rss['max']:.1f} MiB; report {args.out}"
    )
    return 1 if any(report["errors"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
