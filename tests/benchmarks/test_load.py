"""Smoke test of ``skiprec loadtest``: a seconds-long run of the whole harness.

The real service serves the tiny bundle against a real ``redis-server`` that the
harness starts itself; the load generator runs in its own process. Latency figures
are not asserted (a shared CI machine makes them meaningless); the shape of the
result, the request accounting and the written outputs are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_loadtest_cli_builds_the_config() -> None:
    from benchmarks.load import build_parser, config_from_args
    from benchmarks.phases import BenchConfig

    parser = build_parser()
    assert parser.prog == "skiprec loadtest"
    config = config_from_args(parser.parse_args(["--quick", "--workers", "1"]))
    assert config.workers == 1
    assert config.phase_duration == BenchConfig.quick().phase_duration
    assert config_from_args(parser.parse_args([])) == BenchConfig()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")
def test_loadtest_smoke_runs_and_reports(make_run, tmp_path: Path) -> None:
    from benchmarks.load import run_benchmark
    from benchmarks.phases import BenchConfig
    from benchmarks.plot import plot_latency
    from benchmarks.report import write_markdown
    from benchmarks.summary import TARGETS
    from model_export.export import export_bundle
    from tests.conftest import TINY_NUM_TRACKS, TINY_TOP_K

    bundle = tmp_path / "bundle"  # two-stage, so the scaling row runs both ways
    export_bundle(
        make_run(),
        bundle,
        top_k=TINY_TOP_K,
        ann_min_tracks=0,
        ann_candidates=TINY_NUM_TRACKS,
    )
    config = BenchConfig(
        bundle_dir=bundle,
        catalogue=TINY_NUM_TRACKS,
        scaling_catalogues=(TINY_NUM_TRACKS,),
        session_lengths=(5,),
        target_duration=0.5,
        phase_duration=0.5,
        warmup=0.2,
        rates=(500,),
        concurrencies=(4,),
        event_rates=(),
        event_concurrencies=(4,),
        batch_concurrencies=(2,),
        scaling_rate=50,
        num_users=40,
        users_per_length=5,
        floor_seconds=0.1,
        work_dir=tmp_path / "work",
    )
    results = run_benchmark(config)

    rate_500 = results["recommendations"]["rate_500"]
    assert {"p50_ms", "p99_ms", "errors"} <= rate_500.keys()
    assert rate_500["status_counts"].get("200", 0) > 0
    assert rate_500["requests"] == sum(rate_500["status_counts"].values()) + sum(
        rate_500["error_kinds"].get(k, 0) for k in ("timeout", "connection_lost")
    )
    assert results["recommendations"]["saturation_rps"] > 0
    assert results["events"]["single_eps"] > 0
    assert results["events"]["batch_eps"] > 0
    assert results["events"]["batch"][0]["events_per_s"] == pytest.approx(
        100 * results["events"]["batch"][0]["throughput_rps"]
    )
    assert results["population"]["events"] > 40
    assert set(results["session_length"]) == {"5"}
    assert results["floors"]["onnx"]["batches"]["1"]["p50_ms"] > 0
    assert results["floors"]["redis"]["sync_ping"]["p50_ms"] > 0
    assert results["floors"]["noop"]["closed"]["throughput_rps"] > 0
    assert "service" in rate_500["cpu_percent"]
    assert len(results["summary"]["targets"]) == len(TARGETS)
    overload = results["recommendations"]["overload"]
    assert overload["offered_rps"] == pytest.approx(
        3 * results["recommendations"]["saturation_rps"]
    )
    assert overload["admitted"]["count"] + overload["shed_from_send_ms"]["count"] == (
        sum(overload["status_counts"].values())
    )
    scaling = results["catalogue"][str(TINY_NUM_TRACKS)]
    assert set(scaling["model"]["modes"]) == {"exact", "two_stage"}
    assert scaling["model"]["modes"]["two_stage"]["stages_batch_1_p50_ms"]
    assert scaling["retrieval"]["recall"]["recall_at_10"] > 0.9
    # the load asks k=10, which the export's depth for width 10 serves
    (depth,) = scaling["retrieval"]["depths"]
    assert scaling["retrieval"]["served_recall_at_10"] == depth["recall"]
    for mode in ("exact", "two_stage"):
        assert scaling[mode]["status_counts"].get("200", 0) > 0
        assert all(rss > 0 for rss in scaling[mode]["worker_rss_bytes"])
    assert scaling["bundle_bytes"] > 0
    json.dumps(results, allow_nan=True)

    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(
        "# B\n\nprose\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nend\n"
    )
    write_markdown(results, markdown)
    text = markdown.read_text()
    assert "old" not in text and "prose" in text and text.endswith("end\n")
    assert "### GET /recommendations" in text
    assert "Two-stage model step" in text and "Overload:" in text
    png = tmp_path / "latency.png"
    plot_latency(results, png)
    assert png.stat().st_size > 1000
