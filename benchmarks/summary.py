"""The verdict of one ``skiprec loadtest`` result: targets met or missed, the service
against its floors, and the CPU each request costs.

Issue 12 asks, for a target out of reach, for "the measured floor that stops it and
the ratio to it": ``floor_rows`` gives each latency, throughput and CPU target the
bound that the same run's floors put on it (the model step, a Redis round trip and
a FastAPI no-op for a request; for ingestion also Redis's own CPU per event), the
measured value's ratio to that bound, and whether the bound alone misses the goal.

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
        ("catalogue", MILLION, "retrieval", "served_recall_at_10"),
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
    out["floors"] = floor_rows(results, targets)
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


def floor_rows(
    results: dict[str, Any], targets: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per target with a floor: the bound the run's floors put on it.

    A latency's floor is the sum of its parts measured alone (the fastest model step
    at batch 1, a Redis round trip, the no-op's latency at 500 req/s): the service
    cannot answer faster. A throughput's ceiling is what the machine's cores (or, for
    ingestion, Redis's one core at the CPU per event it showed) would carry if a
    request cost only the cheapest model step per request plus the no-op. ``ratio``
    is measured / floor; ``stops``: the floor alone misses the goal.
    """
    floor = results.get("floors")
    if not floor:
        return []
    measured = {t["target"]: t["measured"] for t in targets}
    goals = {label: (goal, op) for label, goal, _, op in TARGETS}
    redis = floor["redis"]["async_ping"]
    noop_open = floor["noop"]["rate_500"]
    noop_cpu = floor["noop"]["closed"]["service_cpu_ms_per_request"]
    main_steps = _model_batches(results, str(results["config"]["catalogue"]))
    onnx = floor["onnx"]["batches"]
    step_b1 = [onnx["1"], *(b["1"] for b in main_steps if "1" in b)]
    best_step = min(
        b["per_request_ms"]
        for b in [*onnx.values(), *(x for m in main_steps for x in m.values())]
    )
    cores = results["machine"]["usable_cpus"]
    bounds: list[tuple[str, str, float]] = []

    def latency(label: str, steps: list[dict[str, Any]], pct: str) -> None:
        if steps:
            value = min(s[pct] for s in steps) + redis[pct] + noop_open[pct]
            what = f"model step b=1 + Redis round trip + no-op, {pct[:3]}"
            bounds.append((label, what, value))

    latency("GET /recommendations p50 @ 500 req/s (ms)", step_b1, "p50_ms")
    latency("GET /recommendations p99 @ 500 req/s (ms)", step_b1, "p99_ms")
    bounds.append(
        (
            "GET /recommendations saturation (req/s)",
            f"{cores} cores / (best model step per request + no-op CPU)",
            cores * 1000.0 / (best_step + noop_cpu),
        )
    )
    bounds.append(
        (
            "GET /recommendations service CPU at saturation (ms/request)",
            "best model step per request + no-op CPU",
            best_step + noop_cpu,
        )
    )
    million = [b["1"] for b in _model_batches(results, MILLION, "two_stage")]
    latency("1M tracks two-stage p50 @ 200 req/s (ms)", million, "p50_ms")
    latency("1M tracks two-stage p99 @ 200 req/s (ms)", million, "p99_ms")
    for label, phases in (
        ("POST /events, 1 event/request (events/s)", "single"),
        ("POST /events, 100 events/request (events/s)", "batch"),
    ):
        best = _best(_get(results, ("events", phases)))
        redis_share = best["cpu_percent"].get("redis", 0.0) / 100 if best else 0.0
        if best and redis_share > 0:
            bounds.append(
                (
                    label,
                    "Redis at one full core, at the CPU per event it used",
                    best["events_per_s"] / redis_share,
                )
            )
    rows = []
    for label, what, value in bounds:
        got = measured[label]
        if not isinstance(got, int | float) or math.isnan(got) or not value:
            continue
        goal, op = goals[label]
        lower = op == "<="
        rows.append(
            {
                "target": label,
                "goal": f"{op} {goal:g}",
                "floor_of": what,
                "floor": value,
                "measured": got,
                "ratio": got / value,
                "stops": value > goal if lower else value < goal,
            }
        )
    return rows


def _model_batches(
    results: dict[str, Any], catalogue: str, *modes: str
) -> list[dict[str, dict[str, Any]]]:
    """The model-step floors (by batch size) of a catalogue's bundle, per path."""
    found = _get(results, ("catalogue", catalogue, "model", "modes")) or {}
    return [m["batches"] for name, m in found.items() if not modes or name in modes]


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
