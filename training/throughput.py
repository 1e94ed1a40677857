"""The training throughput benchmark: ``skiprec train`` timed on synthetic logs, for
1 and N processes (torchrun) and several catalogue sizes, optionally against another
commit checked out in a ``git worktree``.

``training/cli/train_benchmark.py`` is its command. Each run is the real command
(``skiprec train --config training/configs/scale.toml --epochs 1``, under ``torchrun
--standalone`` for N > 1) in its own process group; it is stopped once the first
epoch is in its ``train_log.jsonl``, so the run's post-training tuning (policy,
test split), which is not training, costs nothing. Events/s = the training split's
events / the epoch's ``train_seconds`` (the optimisation pass; validation is timed
apart). Peak RSS is each process's high-water mark (``VmHWM`` of
``/proc/PID/status``, Linux), read while the run goes on: of the largest process and
summed over the launcher and its workers. The load average of the machine is
recorded before and after each run: a busy machine lowers every figure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# How often a running benchmark is looked at (log file, memory high-water marks).
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class BenchRun:
    """One measured ``skiprec train`` run."""

    code: str  # "after" (this checkout) or "before" (the worktree)
    commit: str
    tracks: int  # the synthetic catalogue
    vocabulary_tracks: int  # the distinct tracks of the training split
    processes: int
    train_events: int
    train_seconds: float
    events_per_s: float
    epoch_seconds: float  # with validation
    val_ndcg10: float
    peak_rss_kib_largest: int
    peak_rss_kib_total: int
    load_before: float
    load_after: float


def train_events(data: Path, root: Path) -> tuple[int, int]:
    """Events and distinct tracks of the training split of ``data``, as the code at
    ``root`` splits it (in a subprocess, so that it is that code's split)."""
    script = (
        "import sys; from training.data import load_sessions; "
        "from training.splits import make_split; "
        "s = make_split(load_sessions(sys.argv[1]), 'session'); "
        "print(sum(len(x) for x in s.train), "
        "len({t for x in s.train for t in x.track_ids}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(data)],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        check=True,
    )
    events, tracks = done.stdout.split()
    return int(events), int(tracks)


def train_command(data: Path, out: Path, processes: int, config: Path) -> list[str]:
    """The measured command: ``skiprec train`` for one epoch, under torchrun for
    more than one process."""
    launcher = [sys.executable, "-m"]
    if processes > 1:
        launcher += [
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
            "-m",
        ]
    return [
        *launcher,
        "skiprec_cli",
        "train",
        *("--data", str(data), "--out", str(out), "--config", str(config)),
        *("--epochs", "1", "--quiet"),
    ]


def measure(
    command: list[str], root: Path, out: Path, timeout_s: float
) -> tuple[dict[str, Any], int, int]:
    """Run ``command`` in ``root`` until its first epoch is logged in ``out``; that
    log row, and the peak RSS (KiB) of its largest process and of all of them."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train_log.jsonl"
    log.unlink(missing_ok=True)
    errors = out.parent / f"{out.name}.stderr"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=_env(root),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, stopped as one
        )
    peaks: dict[int, int] = {}
    started = time.monotonic()
    row: dict[str, Any] | None = None
    try:
        while row is None:
            for pid in [process.pid, *_descendants(process.pid)]:
                peaks[pid] = max(peaks.get(pid, 0), _high_water_kib(pid))
            if log.is_file() and log.read_text().strip():
                row = json.loads(log.read_text().splitlines()[0])
                break
            if process.poll() is not None:
                raise RuntimeError(f"{command} failed: {errors.read_text()[-2000:]}")
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{command}: no epoch after {timeout_s:.0f} s")
            time.sleep(POLL_SECONDS)
    finally:
        _stop(process)
    return row, max(peaks.values()), sum(peaks.values())


def bench(
    code: str,
    commit: str,
    root: Path,
    data: Path,
    tracks: int,
    processes: int,
    work: Path,
    timeout_s: float,
) -> BenchRun:
    """One measured run of the code at ``root``."""
    events, vocabulary = train_events(data, root)
    out = work / "runs" / f"{code}-{tracks}-{processes}p"
    config = root / "training" / "configs" / "scale.toml"
    load_before = os.getloadavg()[0]
    command = train_command(data, out, processes, config)
    row, largest, total = measure(command, root, out, timeout_s)
    return BenchRun(
        code=code,
        commit=commit,
        tracks=tracks,
        vocabulary_tracks=vocabulary,
        processes=processes,
        train_events=events,
        train_seconds=round(row["train_seconds"], 2),
        events_per_s=round(events / row["train_seconds"]),
        epoch_seconds=round(row["seconds"], 2),
        val_ndcg10=round(row.get("val_ndcg@10", float("nan")), 4),
        peak_rss_kib_largest=largest,
        peak_rss_kib_total=total,
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
    )


def payload(runs: list[BenchRun], facts: dict[str, Any]) -> dict[str, Any]:
    """The JSON of docs/results/train_throughput.json."""
    return {**facts, "runs": [asdict(run) for run in runs]}


def _env(root: Path) -> dict[str, str]:
    # The code at ``root`` first, ahead of the editable install of this checkout.
    return {**os.environ, "PYTHONPATH": str(root)}


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # "pid (name) state ppid ...": the name may hold spaces, not ")"
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _high_water_kib(pid: int) -> int:
    """``VmHWM`` (peak resident set, KiB) of a process; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the run's whole process group: TERM, then KILL after 10 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
