"""``skiprec synth``: write a synthetic session log (the demo's training data).

    skiprec synth --out demo.csv [--sessions 5000] [--tracks 2000] [--seed 0]

The sessions come from ``training.synthetic.generate_sessions``; the file is the
``events`` format, so ``skiprec train --data demo.csv`` reads it back unchanged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from training.data import write_event_log
from training.synthetic import generate_sessions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skiprec synth", description="Write a synthetic session log (demo data)."
    )
    parser.add_argument("--out", type=Path, required=True, help="output CSV (.gz ok)")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = write_event_log(sessions, args.out)
    skips = sum(sum(s.skipped) for s in sessions)
    print(
        f"wrote {written} events in {len(sessions)} sessions to {args.out} "
        f"(skip rate {skips / max(written, 1):.1%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
