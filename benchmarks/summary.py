"""The verdict of one ``skiprec loadtest`` result: targets met or missed, the service
against its floors, and the CPU each request costs.

``summarize`` runs at the end of every load test; its output is stored in bench.json
under ``summary`` and rendered by ``benchmarks/report.py``.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.report import fmt

# (label, target, path in the results, comparison) -- issue 12's targets; a path
# starting with "cpu_cost" reads :func:`_cpu_cost`'s table.
MILLION = "1000000"
TARGETS: list[tuple[str, float, tuple[str, ...], str]] = [
    (
        "GET /recommendations p50 @ 500 req/s (ms)",
        2.0,
        ("recommendations", "rate_500", "p50_ms"),
        "<=",
    ),
    (
        "GET /recommendations p99 @ 500 req/s (ms)",
        10.0,
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
        2000.0,
        ("recommendations", "saturation_rps"),
        ">=",
    ),
    (
        "GET /recommendations service CPU at saturation (ms/request)",
        1.0,
        ("cpu_cost", "GET /recommendations", "service_cpu_ms_per_request"),
        "<=",
    ),
    (
        "overload at 3x saturation: admitted p99 (ms)",
        50.0,
        ("recommendations", "overload", "admitted", "p99_ms"),
        "<=",
    ),
    (
        "1M tracks two-stage p50 @ 200 req/s (ms)",
        5.0,
        ("catalogue", MILLION, "two_stage", "p50_ms"),
        "<=",
    ),
    (
        "1M tracks two-stage p99 @ 200 req/s (ms)",
        20.0,
        ("catalogue", MILLION, "two_stage", "p99_ms"),
        "<=",
    ),
    (
        "1M tracks two-stage recall@10",
        0.99,
        ("catalogue", MILLION, "retrieval", "recall", "recall_at_10"),
        ">=",
    ),
    (
        "POST /events, 1 event/request (events/s)",
        5000.0,
        ("events", "single_eps"),
        ">=",
    ),
    (
        "POST /events, 100 events/request (events/s)",
        50000.0,
        ("events", "batch_eps"),
        ">=",
    ),
]


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
    cpu_cost = _cpu_cost(results)
    view = results | {"cpu_cost": cpu_cost}
    for label, target, path, op in TARGETS:
        measured = _get(view, path)
        ok = None
        if isinstance(measured, int | float) and not math.isnan(measured):
            ok = measured <= target if op == "<=" else measured >= target
        targets.append(
            {
                "target": label,
                "goal": f"{op} {target:g}",
                "measured": measured,
                # A rate (recall) needs its decimals: 0.9967 is not "1.00".
                "digits": 4 if 0 < target < 1 else 2,
                "ok": ok,
            }
        )
    out: dict[str, Any] = {"targets": targets, "ratios": _ratios(results)}
    out["cpu_cost"] = cpu_cost
    out["targets_table"] = [
        f"{'PASS' if t['ok'] else 'MISS' if t['ok'] is False else 'n/a '}  "
        f"{t['target']}: {fmt(t['measured'], t['digits'])} (goal {t['goal']})"
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
