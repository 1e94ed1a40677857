"""``skiprec synth``: write a synthetic session log (the demo's training data).

    skiprec synth --out demo.csv [--sessions 5000] [--tracks 2000] [--seed 0]
    # a log cut into 10 Parquet files (part-00000.parquet, ...) for --stream
    skiprec synth --out logs/ --files 10 --format parquet --sessions 300000

The sessions come from ``training.synthetic.generate_sessions``; the file is the
``events`` format, so ``skiprec train --data demo.csv`` reads it back unchanged. With
``--files N`` the listeners are dealt to N files in turn (all of one listener's
sessions in one file, so the ``events`` loader cuts the same sessions).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from training.data import Session, write_event_log
from training.synthetic import generate_sessions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skiprec synth", description="Write a synthetic session log (demo data)."
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output CSV (.gz ok) or .parquet; a folder with --files",
    )
    parser.add_argument(
        "--files", type=int, help="write this many files into the folder --out"
    )
    parser.add_argument(
        "--format",
        choices=["csv.gz", "csv", "parquet"],
        default="csv.gz",
        help="file type with --files (default csv.gz)",
    )
    parser.add_argument("--sessions", type=int, default=5000, help="number of sessions")
    parser.add_argument("--tracks", type=int, default=2000, help="catalogue size")
    parser.add_argument("--clusters", type=int, default=40, help="taste clusters")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    sessions = generate_sessions(
        num_sessions=args.sessions,
        num_tracks=args.tracks,
        num_clusters=args.clusters,
        seed=args.seed,
    )
    if args.files is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = write_event_log(sessions, args.out)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        written = _write_parts(sessions, args.out, args.files, args.format)
    skips = sum(sum(s.skipped) for s in sessions)
    print(
        f"wrote {written} events in {len(sessions)} sessions to {args.out} "
        f"(skip rate {skips / max(written, 1):.1%})"
    )
    return 0


def _write_parts(
    sessions: list[Session], folder: Path, num_files: int, suffix: str
) -> int:
    """Deal the listeners to ``num_files`` files in turn; the events written."""
    users = [s.session_id.split("#", 1)[0] for s in sessions]
    file_of = {user: n % num_files for n, user in enumerate(dict.fromkeys(users))}
    written = 0
    for number in range(num_files):
        part = [s for s, u in zip(sessions, users, strict=True) if file_of[u] == number]
        written += write_event_log(part, folder / f"part-{number:05d}.{suffix}")
    return written


if __name__ == "__main__":
    sys.exit(main())
