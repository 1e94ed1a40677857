"""The dependency direction holds: serving is torch-free, the contract imports nobody.

- ``service`` may import ``skiprec`` only: never torch, ``training`` or
  ``model_export``.
- ``skiprec`` (the torch-free contract both sides share) imports none of the
  packages built on it, and not torch.
Each check imports every module of the package in a fresh interpreter.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules_of(package: str) -> list[str]:
    path = ROOT / package
    names = [package]
    for info in pkgutil.walk_packages([str(path)], prefix=f"{package}."):
        names.append(info.name)
    return names


def imported_after(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m for m in {forbidden!r} if m in sys.modules "
        "or any(k.startswith(m + '.') for k in sys.modules)})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("service", ("torch", "training", "model_export", "benchmarks")),
        ("skiprec", ("torch", "training", "model_export", "service", "benchmarks")),
    ],
)
def test_package_never_imports_what_it_must_not(package, forbidden):
    modules = modules_of(package)
    assert len(modules) > 3  # the walk found the package's modules
    assert imported_after(modules, forbidden) == []


def test_the_check_sees_a_forbidden_import():
    assert imported_after(["training.model"], ("torch",)) == ["torch"]
