"""Does the same work cost more after the process has been idle? (the low-load CPU).

    python -m benchmarks.cold_cache

Times a fixed piece of work run back to back and after sleeps of 1, 10 and 50 ms
(what a worker does between requests at low load): a pure-Python loop (the
interpreter's own state, a few KB) and one whole-catalogue score, ``query @ table.T``
over a 100,000 x 64 float32 table (25.6 MB, what the exact path streams per call).
No syscall is inside the timed part, so a slowdown after a sleep is the caches (or
the core's clock) and not the wake-up itself.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

GAPS_S = (0.0, 0.001, 0.01, 0.05)


def _python_loop() -> None:
    total = 0
    for i in range(20_000):
        total += i * i


def _scorer(tracks: int, dim: int) -> Callable[[], None]:
    table = np.random.default_rng(0).standard_normal((tracks, dim), dtype=np.float32)
    query = np.ones((1, dim), dtype=np.float32)

    def score() -> None:
        (query @ table.T).argmax()

    return score


def timed(work: Callable[[], None], gap_s: float, calls: int) -> list[float]:
    """Seconds of each of ``calls`` runs of ``work``, each after ``gap_s`` asleep."""
    seconds = []
    for _ in range(calls):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args(argv)
    works = {
        "python loop": _python_loop,
        f"score {args.tracks:,} x 64 f32": _scorer(args.tracks, 64),
    }
    for name, work in works.items():
        for gap_s in GAPS_S:
            seconds = sorted(timed(work, gap_s, args.calls))
            print(
                f"{name:24s} after {gap_s * 1e3:4.0f} ms idle: median "
                f"{statistics.median(seconds) * 1e3:.3f} ms, "
                f"p90 {seconds[int(0.9 * len(seconds)) - 1] * 1e3:.3f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
