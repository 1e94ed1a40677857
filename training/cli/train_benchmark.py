"""``skiprec train-benchmark``: training throughput (events/s, peak RSS) of
``skiprec train`` for 1 and 2 processes on synthetic 10k- and 100k-track logs, this
checkout and, with ``--before REV``, that commit, run after one another.

    skiprec train-benchmark --before HEAD~1
    skiprec train-benchmark --tracks 100000 --processes 2 --json /tmp/t.json

Writes ``docs/results/train_throughput.json`` (``--json``); how each figure is
measured is ``training/throughput.py``. Run it on an idle machine: every run shares
the cores with whatever else runs. The quality benchmark is ``skiprec benchmark``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from training.throughput import BenchRun, bench, payload

REPO = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec train-benchmark",
        description="Training events/s and peak RSS, 1 and N processes, per catalogue.",
    )
    parser.add_argument(
        "--tracks", type=int, nargs="+", default=[10_000, 100_000], help="catalogues"
    )
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], help="torchrun processes"
    )
    parser.add_argument(
        "--sessions", type=int, default=30_000, help="sessions of each synthetic log"
    )
    parser.add_argument(
        "--before", help="a commit to measure too, checked out in a git worktree"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/skiprec-train-benchmark"),
        help="data, worktree and run directories",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds allowed per run"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "docs" / "results" / "train_throughput.json",
        help="results file to write",
    )
    return parser


def _git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _worktree(work: Path, revision: str) -> tuple[Path, str]:
    """A detached worktree of ``revision`` under ``work`` (made once)."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    root = work / f"before-{commit[:12]}"
    if not root.is_dir():
        _git("worktree", "add", "--detach", str(root), commit)
    return root, commit


def _synthetic(work: Path, tracks: int, sessions: int) -> Path:
    path = work / f"syn{tracks}-{sessions}.csv.gz"
    if not path.is_file():
        subprocess.run(
            [sys.executable, "-m", "skiprec_cli", "synth", "--out", str(path)]
            + ["--tracks", str(tracks), "--sessions", str(sessions)],
            cwd=REPO,
            check=True,
        )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    codes = [("after", REPO, _git("rev-parse", "HEAD"))]
    if args.before:
        root, commit = _worktree(args.work, args.before)
        codes.insert(0, ("before", root, commit))
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "training"))
    runs: list[BenchRun] = []
    for tracks in args.tracks:
        data = _synthetic(args.work, tracks, args.sessions)
        for processes in args.processes:
            for code, root, commit in codes:  # before and after back to back
                run = bench(
                    code, commit, root, data, tracks, processes, args.work, args.timeout
                )
                runs.append(run)
                print(
                    f"{code} {tracks} tracks {processes}p: "
                    f"{run.events_per_s:,} events/s, "
                    f"peak RSS {run.peak_rss_kib_largest / 2**20:.2f} GiB "
                    f"(load {run.load_before:.1f})",
                    flush=True,
                )
    facts = {
        "what": "skiprec train --config training/configs/scale.toml --epochs 1, "
        "synthetic log (skiprec synth --tracks T --sessions S); events/s = "
        "training-split events / train_seconds (evaluation excluded)",
        "command": "skiprec train-benchmark " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "sessions": args.sessions,
        "after_has_uncommitted_training_changes": dirty,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload(runs, facts), indent=1) + "\n")
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
