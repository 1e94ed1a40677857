"""docs/RESULTS.md's generated tables are a pure function of docs/results/mssd.json.

``skiprec benchmark`` writes the aggregated results to mssd.json and then the tables
from them. Rebuilding the block from the committed JSON and finding it byte-identical
to the committed report proves that the report code (variant order, descriptions,
number formats) still produces exactly the published tables, without the hours of
training behind them.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.report import BEGIN, END, results_section, write_generated

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "RESULTS.md"
PAYLOAD = ROOT / "docs" / "results" / "mssd.json"


def test_results_md_is_rebuilt_byte_identically_from_mssd_json(tmp_path: Path):
    payload = json.loads(PAYLOAD.read_text())
    published = RESULTS.read_text()
    block = published.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block == "\n" + results_section(payload) + "\n"
    # The whole file too: write_generated keeps the hand-written text around the block.
    copy = tmp_path / "RESULTS.md"
    copy.write_text(published)
    write_generated(copy, results_section(payload))
    assert copy.read_bytes() == RESULTS.read_bytes()


def test_write_generated_adds_the_block_to_a_report_without_one(tmp_path: Path):
    report = tmp_path / "RESULTS.md"
    report.write_text("# Results\n\nhand-written\n")
    write_generated(report, "| a |")
    write_generated(report, "| b |")
    assert report.read_text() == f"# Results\n\nhand-written\n\n{BEGIN}\n| b |\n{END}\n"
