"""The ``skiprec`` command: a thin dispatcher to each subcommand's own ``main(argv)``.

It lives outside every package it dispatches to (the torch-free ``skiprec`` contract
included), and imports a subcommand only when it runs, so ``skiprec serve`` never
imports torch. ``python -m skiprec_cli`` is the same command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli.train", "train a model on a data file into a run dir"),
    "evaluate": (
        "training.cli.evaluate",
        "evaluate a run (and the baselines) on a split",
    ),
    "benchmark": (
        "training.cli.benchmark",
        "quality tables (regenerates docs/RESULTS.md)",
    ),
    "train-benchmark": (
        "training.cli.train_benchmark",
        "training throughput: events/s and RSS, 1 and N processes",
    ),
    "sampled-error": (
        "training.cli.sampled_error",
        "sampled validation ranks against full ranking on a run",
    ),
    "synth": ("training.cli.synth", "write a synthetic session log (demo data)"),
    "export": ("model_export.export", "export a run to a versioned ONNX bundle"),
    "serve": ("service.serve", "serve a bundle over HTTP (embedded Redis by default)"),
    "events": ("service.events_export", "export the live event log for retraining"),
    "replay": ("benchmarks.replay", "replay held-out sessions through a live service"),
    "loadtest": ("benchmarks.load", "load benchmark of the running service"),
    "online-check": (
        "benchmarks.online_check",
        "offline = online: replay through A/B variants, check /admin/experiments",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: skiprec COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `skiprec COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"skiprec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
