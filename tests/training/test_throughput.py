"""The training benchmark's runner: the measured command, and a run stopped at its
first logged epoch with its processes' peak memory read."""

import sys
import time

import pytest

from training.throughput import measure, train_command


def test_train_command_runs_one_epoch_under_torchrun_for_several_processes(tmp_path):
    one = train_command(tmp_path / "d.csv", tmp_path / "r", 1, tmp_path / "c.toml")
    two = train_command(tmp_path / "d.csv", tmp_path / "r", 2, tmp_path / "c.toml")
    assert one[:4] == [sys.executable, "-m", "skiprec_cli", "train"]
    assert two[2:6] == [
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    assert one[-3:] == two[-3:] == ["--epochs", "1", "--quiet"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_run_is_stopped_once_its_first_epoch_is_logged(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # A child that holds ~50 MB, logs an epoch, then would run for a minute.
    script = (
        "import json, pathlib, subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', "
        "'b = bytearray(50 * 2**20); import time; time.sleep(60)']); "
        "time.sleep(1.5); "
        f"pathlib.Path({str(out / 'train_log.jsonl')!r}).write_text("
        "json.dumps({'epoch': 1, 'train_seconds': 2.0}) + chr(10)); "
        "time.sleep(60)"
    )
    started = time.monotonic()
    row, largest, total = measure([sys.executable, "-c", script], tmp_path, out, 30)
    assert row == {"epoch": 1, "train_seconds": 2.0}
    assert time.monotonic() - started < 20  # stopped, not waited for
    assert largest >= 50 * 1024 and total > largest


def test_a_run_that_fails_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        measure(
            [sys.executable, "-c", "raise SystemExit('boom')"], tmp_path, tmp_path, 30
        )
