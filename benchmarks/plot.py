"""The latency-vs-load figure of docs/BENCHMARKS.md from one ``skiprec loadtest``
result.

Left: ``GET /recommendations`` p50/p95/p99 against the offered open-loop rate, with
the issue's targets drawn in. Right: every endpoint's closed-loop p50/p99 against the
throughput it achieved (each point one concurrency level).

    python -m benchmarks.plot docs/results/bench.json docs/results/bench_latency.png
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_latency(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rec = results.get("recommendations", {})
    open_loop = rec.get("open", [])
    if open_loop:
        rates = [r["offered_rps"] for r in open_loop]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^-")):
            left.plot(rates, [r[key] for r in open_loop], style, label=key[:-3])
        left.axhline(3.0, color="grey", linestyle=":", linewidth=1)
        left.axhline(15.0, color="grey", linestyle="--", linewidth=1)
        left.axvline(500.0, color="grey", linewidth=0.5)
        left.text(rates[0], 3.0, " p50 target", va="bottom", fontsize=8)
        left.text(rates[0], 15.0, " p99 target", va="bottom", fontsize=8)
    left.set(
        title="GET /recommendations, open loop",
        xlabel="offered load (req/s)",
        ylabel="latency from scheduled send (ms)",
        yscale="log",
    )
    left.legend()
    left.grid(True, which="both", alpha=0.3)

    events = results.get("events", {})
    series = [
        ("GET /recommendations", rec.get("closed", []), "throughput_rps"),
        ("POST /events ×1", _closed(events.get("single", [])), "events_per_s"),
        ("POST /events ×100", events.get("batch", []), "events_per_s"),
    ]
    for label, runs, x_key in series:
        if not runs:
            continue
        xs = [r[x_key] for r in runs]
        line = right.plot(xs, [r["p50_ms"] for r in runs], "o-", label=f"{label} p50")
        right.plot(
            xs,
            [r["p99_ms"] for r in runs],
            "^--",
            color=line[0].get_color(),
            label=f"{label} p99",
        )
    right.set(
        title="closed loop (points: concurrency levels)",
        xlabel="achieved throughput (req/s for GET, events/s for POST)",
        ylabel="latency (ms)",
        xscale="log",
        yscale="log",
    )
    right.legend(fontsize=7)
    right.grid(True, which="both", alpha=0.3)
    machine = results.get("machine", {})
    fig.suptitle(
        f"skiprec service, {results.get('config', {}).get('catalogue', 0):,} tracks, "
        f"d=64 L=50 — {machine.get('usable_cpus', '?')} CPUs "
        f"({machine.get('cpu_model', '')}), loopback",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _closed(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r["mode"] == "closed"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m benchmarks.plot BENCH_JSON OUT_PNG", file=sys.stderr)
        return 2
    plot_latency(json.loads(Path(args[0]).read_text()), Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
