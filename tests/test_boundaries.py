"""Serving stays torch-free: importing the service never pulls in training code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "training", "model_export")


def test_importing_the_service_leaves_torch_and_training_out():
    code = (
        "import json, sys\n"
        "import service.main, service.cli, service.events_cli\n"
        f"print(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules "
        "or any(k.startswith(m + '.') for k in sys.modules)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
