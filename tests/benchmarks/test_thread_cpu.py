"""benchmarks.thread_cpu against the real service: every phase answers and is split."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import thread_cpu


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_thread_cpu_splits_each_load_between_loop_and_inference(tiny_bundle_dir):
    # A lone request is ranked on the event loop when the batcher is idle, so an
    # open loop this light would put no inference on the other threads at all.
    rows = thread_cpu.measure(
        tiny_bundle_dir,
        1,
        ["open:20", "closed:2"],
        users=20,
        seconds=1.5,
        env={"SKIPREC_INLINE_INFERENCE": "false"},
    )
    assert [row["load"] for row in rows] == ["open:20", "closed:2"]
    assert rows[0]["requests"] >= 25  # 20 req/s for 1.5 s, all answered
    for row in rows:
        assert row["loop_cpu_ms_per_request"] > 0
        assert row["other_cpu_ms_per_request"] > 0
        total = row["loop_cpu_ms_per_request"] + row["other_cpu_ms_per_request"]
        assert row["cpu_ms_per_request"] == pytest.approx(total)
