"""The documented settings match ``service.settings.Settings`` exactly.

README.md's Configuration table and docs/ARCHITECTURE.md's settings table must each
list every field of ``Settings``, nothing else, with the field's default; any other
``SKIPREC_*`` name in the README must be one of the variables read outside the service.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PREFIX = str(Settings.model_config.get("env_prefix", ""))
# Read by the Makefile, the Docker trainer and data-dependent tests, not the service.
OUTSIDE_SERVICE = {"SKIPREC_DATA", "SKIPREC_DATA_FORMAT", "SKIPREC_SHARED_DATA"}
ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|")
ENV_NAME = re.compile(r"\bSKIPREC_[A-Z0-9_]+\b")


def _table_rows(lines: list[str]) -> dict[str, str]:
    """``{name: default cell}`` of the rows whose first cell is a backticked name."""
    rows: dict[str, str] = {}
    for line in lines:
        match = ROW.match(line)
        if match:
            name, default = match.groups()
            assert name not in rows, f"{name} is listed twice"
            rows[name] = default.replace("`", "").strip()
    return rows


def readme_table() -> dict[str, str]:
    """The README's Configuration table, keyed by field name (prefix dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = _table_rows(section.splitlines())
    return {
        name.removeprefix(PREFIX): cell
        for name, cell in rows.items()
        if name.startswith(PREFIX)
    }


def architecture_table() -> dict[str, str]:
    """docs/ARCHITECTURE.md's table under the ``setting (`SKIPREC_`)`` header."""
    lines = (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting ("))
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append(line)
    return _table_rows(table)


def documented_default_error(name: str, field: FieldInfo, cell: str) -> str | None:
    """Why ``cell`` does not state ``field``'s default, or None when it does."""
    if field.is_required():
        ok = "required" in cell
    elif field.default_factory is not None:
        ok = "empty" in cell
    elif field.default is None:
        ok = "unset" in cell
    elif isinstance(field.default, bool):
        ok = cell.lower() == str(field.default).lower()
    elif isinstance(field.default, int | float):
        try:
            ok = float(cell) == float(field.default)
        except ValueError:
            ok = False
    elif isinstance(field.default, Path):
        ok = Path(cell) == field.default
    else:
        ok = cell == str(field.default)
    return None if ok else f"{name}: documented {cell!r}, default {field.default!r}"


@pytest.mark.parametrize(
    "table", [readme_table, architecture_table], ids=["README", "ARCHITECTURE"]
)
def test_settings_table_lists_every_field_with_its_default(
    table: Callable[[], dict[str, str]],
) -> None:
    documented = table()
    fields = {name.upper(): info for name, info in Settings.model_fields.items()}
    assert sorted(set(fields) - set(documented)) == [], "settings missing from the doc"
    assert sorted(set(documented) - set(fields)) == [], "documented but not settings"
    errors = [
        documented_default_error(name, fields[name], cell)
        for name, cell in documented.items()
    ]
    assert [error for error in errors if error] == []


def test_readme_names_no_unknown_variable() -> None:
    known = {PREFIX + name.upper() for name in Settings.model_fields} | OUTSIDE_SERVICE
    named = set(ENV_NAME.findall((ROOT / "README.md").read_text()))
    assert sorted(named - known) == []
