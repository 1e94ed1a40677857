"""benchmarks.store on a real redis-server: both call shapes run and say so."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import store


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_store_benchmark_measures_both_call_shapes(tmp_path):
    out = tmp_path / "store.json"
    store.main(
        [
            "--users",
            "20",
            "1",
            "--events",
            "200",
            "--history",
            "3",
            "--served",
            "1",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())
    assert [(r["mode"], r["users"]) for r in rows] == [
        ("per-slot", 20),
        ("one call", 20),
        ("per-slot", 1),
    ]
    for row in rows:
        assert row["events"] == row["calls"] * row["users"] > 0
        assert row["redis_cpu_us_per_event"] > 0 and row["events_per_s"] > 0
