"""The load test's verdict: each target against the bound the run's floors put on it."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.report import render_target_floors
from benchmarks.summary import floor_rows, summarize


def _latency(p50: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {"p50_ms": p50, "p99_ms": p99, **extra}


def _phase(rps: float, events: float, redis: float, cpu: float) -> dict[str, Any]:
    return {
        "mode": "closed",
        "errors": 0,
        "throughput_rps": rps,
        "events_per_s": events,
        "cpu_percent": {"redis": redis, "service": 100.0},
        "service_cpu_ms_per_request": cpu,
    }


def _results() -> dict[str, Any]:
    """A run with round numbers: every floor below is computed by hand."""
    return {
        "config": {"catalogue": 100000, "workers": 2, "onnx_threads": 1},
        "machine": {"usable_cpus": 2},
        "floors": {
            "onnx": {
                "batches": {
                    "1": _latency(1.4, 1.6, per_request_ms=1.4),
                    "8": _latency(6.4, 8.0, per_request_ms=0.8),
                }
            },
            "redis": {"async_ping": _latency(0.1, 0.4)},
            "noop": {
                "rate_500": _latency(0.5, 2.0),
                "closed": _phase(10000.0, 0.0, 0.0, 0.2),
            },
        },
        "catalogue": {
            "100000": {
                "model": {
                    "modes": {
                        "exact": {
                            "batches": {"1": _latency(1.5, 1.7, per_request_ms=1.5)}
                        },
                        # the cheapest step per request of the whole run: 0.6 ms
                        "two_stage": {
                            "batches": {
                                "1": _latency(1.0, 1.2, per_request_ms=1.0),
                                "8": _latency(4.8, 6.0, per_request_ms=0.6),
                            }
                        },
                    }
                }
            },
            "1000000": {
                "model": {
                    "modes": {
                        "exact": {
                            "batches": {"1": _latency(20.0, 21.0, per_request_ms=20.0)}
                        },
                        "two_stage": {
                            "batches": {"1": _latency(1.4, 1.9, per_request_ms=1.4)}
                        },
                    }
                },
                "two_stage": _latency(4.0, 12.0),
            },
        },
        "recommendations": {
            "rate_500": _latency(8.0, 30.0, errors=0, offered_rps=500.0),
            "saturation_rps": 750.0,
            "closed": [_phase(750.0, 0.0, 10.0, 2.2)],
        },
        "events": {
            "single": [_phase(4000.0, 4000.0, 25.0, 0.4)],
            "batch": [_phase(200.0, 20000.0, 80.0, 2.0)],
            "single_eps": 4000.0,
            "batch_eps": 20000.0,
        },
    }


def test_floors_are_the_runs_parts_summed_or_its_cores_divided() -> None:
    results = _results()
    summary = summarize(results)
    rows = {r["target"]: r for r in floor_rows(results, summary["targets"])}
    get = rows["GET /recommendations p50 @ 500 req/s (ms)"]
    # fastest batch-1 step of the three (bare ONNX 1.4, exact 1.5, two stages 1.0)
    assert get["floor"] == pytest.approx(1.0 + 0.1 + 0.5)
    assert get["ratio"] == pytest.approx(8.0 / 1.6)
    assert not get["stops"]  # 1.6 ms alone is under the 2 ms goal
    p99 = rows["GET /recommendations p99 @ 500 req/s (ms)"]
    assert p99["floor"] == pytest.approx(1.2 + 0.4 + 2.0)
    cpu = rows["GET /recommendations service CPU at saturation (ms/request)"]
    assert cpu["floor"] == pytest.approx(0.6 + 0.2)
    saturation = rows["GET /recommendations saturation (req/s)"]
    assert saturation["floor"] == pytest.approx(2 * 1000 / 0.8)
    assert saturation["ratio"] == pytest.approx(750 / 2500)
    million = rows["1M tracks two-stage p50 @ 200 req/s (ms)"]
    assert million["floor"] == pytest.approx(1.4 + 0.1 + 0.5)
    single = rows["POST /events, 1 event/request (events/s)"]
    assert single["floor"] == pytest.approx(4000 / 0.25)
    batch = rows["POST /events, 100 events/request (events/s)"]
    assert batch["floor"] == pytest.approx(20000 / 0.8)
    assert batch["stops"]  # Redis at a full core: 25,000 < 50,000
    # targets without a floor of their own get no row
    assert "GET /recommendations errors @ 500 req/s" not in rows
    assert "1M tracks two-stage recall@10" not in rows


def test_a_floor_above_a_latency_goal_is_reported_as_stopping_it() -> None:
    results = _results()
    results["floors"]["redis"]["async_ping"]["p50_ms"] = 1.5  # 1.0 + 1.5 + 0.5 > 2
    summary = summarize(results)
    (row,) = [
        r
        for r in summary["floors"]
        if r["target"] == "GET /recommendations p50 @ 500 req/s (ms)"
    ]
    assert row["stops"]


def test_no_floors_measured_means_no_rows() -> None:
    results = _results()
    del results["floors"]
    assert floor_rows(results, summarize(results)["targets"]) == []


def test_the_report_shows_each_floor_and_its_ratio() -> None:
    results = _results()
    text = "\n".join(render_target_floors(summarize(results)["floors"]))
    assert (
        "| POST /events, 100 events/request (events/s) | >= 50000 | Redis at one full "
        "core, at the CPU per event it used | 25,000 | 20,000 | 0.80× | misses the "
        "goal |"
    ) in text
