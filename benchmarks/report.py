"""Turn one ``skiprec bench`` result into the targets verdict and docs/BENCHMARKS.md.

The generated tables replace whatever sits between the ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` markers of the markdown file; the prose around them (method,
analysis, profile findings) is written by hand and survives a rerun.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

# (label, target, path in the results, comparison) -- the targets.
TARGETS: list[tuple[str, float, tuple[str, ...], str]] = [
    (
        "GET /recommendations p50 @ 500 req/s (ms)",
        3.0,
        ("recommendations", "rate_500", "p50_ms"),
        "<=",
    ),
    (
        "GET /recommendations p99 @ 500 req/s (ms)",
        15.0,
        ("recommendations", "rate_500", "p99_ms"),
        "<=",
    ),
    (
        "GET /recommendations errors @ 500 req/s",
        0.0,
        ("recommendations", "rate_500", "errors"),
        "<=",
    ),
    (
        "GET /recommendations saturation (req/s)",
        1000.0,
        ("recommendations", "saturation_rps"),
        ">=",
    ),
    (
        "POST /events, 1 event/request (events/s)",
        3000.0,
        ("events", "single_eps"),
        ">=",
    ),
    (
        "POST /events, 100 events/request (events/s)",
        30000.0,
        ("events", "batch_eps"),
        ">=",
    ),
]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, load, versions: what the numbers were taken on."""
    cpuinfo = (
        Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    )
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    meminfo: dict[str, int] = {}
    if Path("/proc/meminfo").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            meminfo[name] = int(value.split()[0])
    info: dict[str, Any] = {
        "cpu_model": models[0] if models else platform.processor(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "mem_total_gib": round(meminfo.get("MemTotal", 0) / 2**20, 1),
        "mem_available_gib": round(meminfo.get("MemAvailable", 0) / 2**20, 1),
        "load_average": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }
    for package in ("onnxruntime", "fastapi", "uvicorn", "redis", "numpy"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    binary = shutil.which("redis-server")
    if binary:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True)
        info["redis_server"] = version.stdout.strip()
    return info


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _get(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Targets met or missed, and the service / floor ratios."""
    targets = []
    for label, target, path, op in TARGETS:
        measured = _get(results, path)
        ok = None
        if isinstance(measured, int | float) and not math.isnan(measured):
            ok = measured <= target if op == "<=" else measured >= target
        targets.append(
            {
                "target": label,
                "goal": f"{op} {target:g}",
                "measured": measured,
                "ok": ok,
            }
        )
    out: dict[str, Any] = {"targets": targets, "ratios": _ratios(results)}
    out["cpu_cost"] = _cpu_cost(results)
    out["targets_table"] = [
        f"{'PASS' if t['ok'] else 'MISS' if t['ok'] is False else 'n/a '}  "
        f"{t['target']}: {_fmt(t['measured'])} (goal {t['goal']})"
        for t in targets
    ]
    return out


def _ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Service vs the sum of its floors (latency) and vs the no-op (throughput)."""
    floor = results.get("floors")
    service = _get(results, ("recommendations", "rate_500"))
    if not floor or not service:
        return {}
    onnx_b1 = floor["onnx"]["batches"]["1"]["p50_ms"]
    redis_rtt = floor["redis"]["async_ping"]["p50_ms"]
    noop = floor["noop"]["rate_500"]["p50_ms"]
    floor_sum = onnx_b1 + redis_rtt + noop
    # The lightest open-loop phase: the service's latency when nothing queues.
    light = min(
        _get(results, ("recommendations", "open")) or [service],
        key=lambda r: r["offered_rps"],
    )
    saturation = _get(results, ("recommendations", "saturation_rps"))
    noop_sat = floor["noop"]["closed"]["throughput_rps"]
    best_batch = min(b["per_request_ms"] for b in floor["onnx"]["batches"].values())
    return {
        "p50_floor_sum_ms": floor_sum,
        "p50_service_over_floor": service["p50_ms"] / floor_sum,
        "light_rate": light["offered_rps"],
        "p50_light_over_floor": light["p50_ms"] / floor_sum,
        "saturation_over_noop": (saturation or 0.0) / noop_sat if noop_sat else None,
        "onnx_bound_rps_per_thread": 1000.0 / best_batch,
    }


def _cpu_cost(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Service CPU per request in the busiest error-free closed-loop phase of each
    workload, and the requests/s one fully available core would then carry."""
    workloads = {
        "FastAPI no-op": _get(results, ("floors", "noop", "closed")),
        "GET /recommendations": _best(_get(results, ("recommendations", "closed"))),
        "POST /events ×1": _best(_get(results, ("events", "single"))),
        "POST /events ×100": _best(_get(results, ("events", "batch"))),
    }
    out = {}
    for name, result in workloads.items():
        cost = (result or {}).get("service_cpu_ms_per_request")
        if cost:
            out[name] = {
                "service_cpu_ms_per_request": cost,
                "requests_per_core_s": 1000.0 / cost,
                "redis_cpu_percent": result["cpu_percent"].get("redis", 0.0),
                "throughput_rps": result["throughput_rps"],
            }
    return out


def _best(results: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    closed = [r for r in results or [] if r["mode"] == "closed" and r["errors"] == 0]
    return max(closed, key=lambda r: r["throughput_rps"], default=None)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _cpu(result: dict[str, Any], name: str) -> str:
    value = result.get("cpu_percent", {}).get(name)
    return "–" if value is None else f"{value:.0f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _load_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        load = (
            f"{r['offered_rps']:g}/s"
            if r["mode"] == "open"
            else f"c={r['concurrency']}"
        )
        eps = r.get("events_per_s")
        rows.append(
            [
                load,
                _fmt(r["throughput_rps"]),
                _fmt(eps) if eps is not None else "–",
                _fmt(r["p50_ms"]),
                _fmt(r["p95_ms"]),
                _fmt(r["p99_ms"]),
                _fmt(r["max_ms"]),
                str(r["errors"]),
                _cpu(r, "service"),
                _cpu(r, "redis"),
                _cpu(r, "loadgen"),
                _cpu(r, "machine"),
                _fmt(r.get("service_cpu_ms_per_request"), 3),
            ]
        )
    return rows


LOAD_HEADER = [
    "load",
    "req/s",
    "events/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "errors",
    "CPU service",
    "CPU redis",
    "CPU loadgen",
    "CPU machine",
    "service CPU ms/request",
]


def render(results: dict[str, Any]) -> list[str]:
    """The generated markdown (tables only)."""
    m = results["machine"]
    cfg = results["config"]
    lines = [
        f"Generated by `{results.get('command', 'skiprec bench')}` on {m['date']} "
        f"(commit {m['git_commit']}, {results.get('elapsed_s', 0):.0f} s).",
        "",
        f"**Machine:** {m['cpu_model']}, {m['usable_cpus']} usable of "
        f"{m['logical_cpus']} logical CPUs, {m['mem_total_gib']} GiB RAM; load average "
        f"at the start {m['load_average'][0]:.2f}; Linux {m['kernel']}, Python "
        f"{m['python']}, onnxruntime {m['onnxruntime']}, fastapi {m['fastapi']}, "
        f"uvicorn {m['uvicorn']}, redis-py {m['redis']}, {m.get('redis_server', '')}.",
        "",
        f"**Service:** `skiprec serve` with {cfg['workers']} worker(s), "
        f"SKIPREC_ONNX_THREADS={cfg['onnx_threads']}"
        + "".join(f", {k}={v}" for k, v in cfg["service_env"])
        + f"; bundle: {cfg['catalogue']:,} tracks, d=64, L=50, 2 layers, K="
        f"{cfg['top_k']}; Redis: a local `redis-server`, no persistence.",
        "",
        "### Targets",
        "",
    ]
    rows = [
        [
            t["target"],
            t["goal"],
            _fmt(t["measured"]),
            "met" if t["ok"] else "missed" if t["ok"] is False else "n/a",
        ]
        for t in results["summary"]["targets"]
    ]
    lines += _table(["target", "goal", "measured", ""], rows)
    pop = results.get("population")
    if pop:
        lines += [
            "",
            f"Users: {pop['users']:,} with sessions of 1..200 events (lognormal, "
            f"median 20) plus {pop['users_per_length']} users per fixed length; "
            f"{pop['events']:,} events posted through the API in "
            f"{pop['seconds']:.1f} s.",
        ]
    rec = results.get("recommendations")
    if rec:
        lines += [
            "",
            "### GET /recommendations/{user_id}?k=10",
            "",
            "Open loop (latency from the scheduled send time):",
            "",
        ]
        lines += _table(LOAD_HEADER, _load_rows(rec["open"]))
        lines += ["", "Closed loop (saturation):", ""]
        lines += _table(LOAD_HEADER, _load_rows(rec["closed"]))
    events = results.get("events")
    if events:
        lines += ["", "### POST /events", "", "One event per request:", ""]
        lines += _table(LOAD_HEADER, _load_rows(events["single"]))
        lines += ["", "100 events per request:", ""]
        lines += _table(LOAD_HEADER, _load_rows(events["batch"]))
    cost = results["summary"].get("cpu_cost")
    if cost:
        lines += [
            "",
            "### CPU cost per request",
            "",
            "Busiest error-free closed-loop phase of each workload; *per core* is "
            "what one fully available core would carry at that cost (the figure "
            "that survives a shared machine).",
            "",
        ]
        rows = [
            [
                name,
                _fmt(c["service_cpu_ms_per_request"], 3),
                _fmt(c["requests_per_core_s"]),
                _fmt(c["throughput_rps"]),
                f"{c['redis_cpu_percent']:.0f}%",
            ]
            for name, c in cost.items()
        ]
        lines += _table(
            [
                "workload",
                "service CPU ms/request",
                "requests/s per core",
                "measured req/s",
                "CPU redis",
            ],
            rows,
        )
    lines += _render_floors(results)
    lines += _render_scaling(results)
    return lines


def _render_floors(results: dict[str, Any]) -> list[str]:
    floor = results.get("floors")
    if not floor:
        return []
    onnx = floor["onnx"]
    lines = [
        "",
        "### Floors",
        "",
        f"Bare ONNX Runtime, {onnx['num_items']:,} items, sessions of "
        f"{onnx['seq_len']} events, {onnx['intra_op_threads']} intra-op thread:",
        "",
    ]
    rows = [
        [batch, _fmt(s["p50_ms"]), _fmt(s["p99_ms"]), _fmt(s["per_request_ms"], 3)]
        for batch, s in onnx["batches"].items()
    ]
    lines += _table(["batch", "p50 ms/call", "p99 ms/call", "ms/request"], rows)
    redis = floor["redis"]
    noop = floor["noop"]
    lines += [
        "",
        f"Redis PING round trip: sync redis-py p50 "
        f"{_fmt(redis['sync_ping']['p50_ms'], 3)} ms "
        f"(p99 {_fmt(redis['sync_ping']['p99_ms'], 3)}), asyncio redis-py p50 "
        f"{_fmt(redis['async_ping']['p50_ms'], 3)} ms "
        f"(p99 {_fmt(redis['async_ping']['p99_ms'], 3)}).",
        "",
        f"FastAPI no-op (same uvicorn settings): at 500 req/s p50 "
        f"{_fmt(noop['rate_500']['p50_ms'])} ms, p99 {_fmt(noop['rate_500']['p99_ms'])}"
        f" ms; closed loop c={noop['closed']['concurrency']}: "
        f"{_fmt(noop['closed']['throughput_rps'])} req/s "
        f"(service CPU {_cpu(noop['closed'], 'service')}).",
    ]
    ratios = results["summary"]["ratios"]
    if ratios:
        lines += [
            "",
            f"Service / floor: p50 at {ratios['light_rate']:g} req/s is "
            f"{_fmt(ratios['p50_light_over_floor'])}× and at 500 req/s "
            f"{_fmt(ratios['p50_service_over_floor'])}× the sum of the floors "
            f"(ONNX batch 1 + async Redis + no-op = {_fmt(ratios['p50_floor_sum_ms'])}"
            f" ms); saturation is {_fmt(ratios['saturation_over_noop'])}× the no-op's "
            f"throughput; best batched ONNX alone would cap one inference thread at "
            f"{_fmt(ratios['onnx_bound_rps_per_thread'])} req/s.",
        ]
    return lines


def _render_scaling(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    by_length = results.get("session_length")
    if by_length:
        first = next(iter(by_length.values()))
        lines += [
            "",
            "### Latency vs stored session length",
            "",
            f"Open loop at {first['offered_rps']:g} req/s; the model reads "
            "the newest 50 events (max_seq_len); Redis cuts the session inside "
            "its read script and returns only those and the earlier skips.",
            "",
        ]
        rows = [[length, *_load_rows([r])[0][1:]] for length, r in by_length.items()]
        lines += _table(["events", *LOAD_HEADER[1:]], rows)
    catalogue = results.get("catalogue")
    if catalogue:
        lines += ["", "### Latency vs catalogue size", ""]
        rows = []
        for tracks, entry in catalogue.items():
            onnx = entry["onnx"]["batches"]
            r = entry["open"]
            rows.append(
                [
                    f"{int(tracks):,}",
                    _fmt(onnx["1"]["p50_ms"]),
                    _fmt(onnx["8"]["per_request_ms"], 3),
                    f"{r['offered_rps']:g}/s",
                    _fmt(r["throughput_rps"]),
                    _fmt(r["p50_ms"]),
                    _fmt(r["p99_ms"]),
                    str(r["errors"]),
                    _cpu(r, "service"),
                ]
            )
        header = [
            "tracks",
            "ONNX b=1 p50 ms",
            "ONNX b=8 ms/request",
            "offered",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "CPU service",
        ]
        lines += _table(header, rows)
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Replace the generated block of ``path`` (created with a stub if absent)."""
    block = "\n".join([BEGIN, *render(results), END])
    if path.exists() and BEGIN in path.read_text():
        text = path.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        path.write_text(head + block + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Benchmarks\n\n## Results\n\n{block}\n")
