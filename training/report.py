"""Markdown tables of evaluation metrics.

``markdown_table`` is one row per model, the headline metrics; ``policy_table`` and
``skip_table`` are what ``skiprec evaluate`` prints (each model under each serving
policy against the reference row, and skip prediction). ``results_section`` is the
generated block of docs/RESULTS.md, a pure function of the aggregated results that
``skiprec benchmark`` also writes to docs/results/mssd.json, so the tables can be
rebuilt from that file alone;
``write_generated`` swaps the block between its markers and keeps the hand-written
text around it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.variants import BASELINE_NAMES, LAMBDAS, VARIANTS

COLUMNS = (
    "ndcg@10",
    "hr@10",
    "mrr@10",
    "played/ndcg@10",
    "skipped/ndcg@10",
    "ndcg_gap@10",
    "skip_mrr@10",
)


def describe(config: TrainConfig) -> str:
    """A short variant name for a run's config, e.g. ``sasrec+fb+skip_cl0.5``."""
    name: str = config.model.backbone
    if config.model.feedback_input:
        name += "+fb"
    loss = config.loss
    if loss.target in ("next_played", "played_only"):
        name += f"+{loss.target}"
    if loss.skip_cl_weight:
        name += f"+skip_cl{loss.skip_cl_weight:g}"
    if loss.unlikelihood_weight:
        name += f"+ul{loss.unlikelihood_weight:g}"
    if loss.skip_hard_negatives:
        name += "+hardneg"
    if config.prior.transition_prior:
        name += "+prior"
    return name


def markdown_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """One row per model, the headline metrics as columns (4 decimals)."""
    header = "| model | " + " | ".join(COLUMNS) + " | examples |"
    rule = "|---|" + "---:|" * (len(COLUMNS) + 1)
    rows = [
        f"| {name} | "
        + " | ".join(f"{metrics.get(c, float('nan')):.4f}" for c in COLUMNS)
        + f" | {int(metrics.get('num_examples', 0))} |"
        for name, metrics in results.items()
    ]
    return "\n".join([header, rule, *rows])


def _interval(cell: Mapping[str, Any] | None) -> str:
    if not cell or cell.get("difference") is None:
        return "–"
    return f"{cell['difference']:+.4f} [{cell['low']:+.4f}, {cell['high']:+.4f}]"


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}"


def policy_table(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    chosen: Mapping[str, Mapping[str, float]],
    choose_by: str,
) -> str:
    """``skiprec evaluate``'s tables: each (model, serving policy) row with its
    difference to the reference row, then the played/skipped split by the previous
    event, then the penalties chosen on validation."""
    header = (
        "| model | policy | ndcg@10 | Δ ndcg@10 [95%] | played/ndcg@10 "
        "| Δ played/ndcg@10 [95%] | hr@10 | Δ hr@10 [95%] | skipped/ndcg@10 "
        "| excluded targets |"
    )
    lines = [title, "", header, "|---|---|" + "---:|" * 8]
    for row in rows:
        m, vs = row["metrics"], row["vs_reference"]
        policy = row["policy"] + (" (reference)" if row["reference"] else "")
        lines.append(
            f"| {row['model']} | {policy} | {_number(m['ndcg@10'])} | "
            f"{_interval(vs.get('ndcg@10'))} | {_number(m['played/ndcg@10'])} | "
            f"{_interval(vs.get('played/ndcg@10'))} | {_number(m['hr@10'])} | "
            f"{_interval(vs.get('hr@10'))} | {_number(m['skipped/ndcg@10'])} | "
            f"{int(m['num_excluded_targets'])} |"
        )
    lines += [
        "",
        "By the previous event (NDCG@10 of played and skipped targets, gap = played "
        "− skipped):",
        "",
        "| model | policy | after a play: played | skipped | gap "
        "| after a skip: played | skipped | gap | examples after a skip |",
        "|---|---|" + "---:|" * 7,
    ]
    for row in rows:
        m = row["metrics"]
        cells = [
            _number(m.get(f"{prefix}/{key}"))
            for prefix in ("after_play", "after_skip")
            for key in ("played/ndcg@10", "skipped/ndcg@10", "ndcg_gap@10")
        ]
        lines.append(
            f"| {row['model']} | {row['policy']} | "
            + " | ".join(cells)
            + f" | {int(m.get('after_skip/num_examples', 0))} |"
        )
    if chosen:
        picks = "; ".join(
            f"{name}: skipped {c['skipped_penalty']:g}, played {c['played_penalty']:g}"
            f" (validation {c[f'validation {choose_by}']:.4f})"
            for name, c in chosen.items()
        )
        lines += [
            "",
            f"`penalize` penalties (log-score units) chosen on the validation split "
            f"by {choose_by}: {picks}. The test split chose nothing.",
        ]
    return "\n".join(lines)


def skip_table(skip: Mapping[str, Any]) -> str:
    """The skip-prediction block of ``skiprec evaluate``."""
    reference = skip.get("reference")
    versus = f" vs {reference}" if reference else ""
    lines = [
        f"Skip prediction on the actual next track ({skip['examples']} test "
        "examples; baselines fitted on the training split). Pairwise AUC: pairs of "
        "one session with the same previous event and different outcomes (the "
        "candidate-specific part).",
        "",
        f"| predictor | AUC | Δ AUC{versus} [95%] | log loss | ECE (10 bins) "
        f"| AUC after a play | AUC after a skip | pairwise AUC "
        f"| Δ pairwise{versus} [95%] |",
        "|---|" + "---:|" * 8,
    ]
    for name, r in skip["predictors"].items():
        lines.append(
            f"| {name} | {_number(r['auc'])} | "
            f"{_interval(r.get('auc_vs_momentum_logistic'))} | "
            f"{_number(r['log_loss'])} | {_number(r['ece'])} | "
            f"{_number(r['auc_after_play'])} | {_number(r['auc_after_skip'])} | "
            f"{_number(r['pairwise_auc'])} | "
            f"{_interval(r.get('pairwise_auc_vs_momentum_logistic'))} |"
        )
    for note in skip.get("notes", []):
        lines += ["", f"Note: {note}."]
    return "\n".join(lines)


BEGIN = "<!-- BEGIN GENERATED by `skiprec benchmark`; do not edit by hand -->"
END = "<!-- END GENERATED -->"


def _fmt(cell: Mapping[str, float] | None) -> str:
    if cell is None:
        return "–"
    if cell["std"] == 0.0:
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.4f} ± {cell['std']:.4f}"


def variants_table(rows: Mapping[str, Mapping[str, Any]], order: Sequence[str]) -> str:
    cols = (
        "ndcg@10",
        "hr@10",
        "played/ndcg@10",
        "skipped/ndcg@10",
        "ndcg_gap@10",
        "skip_mrr@10",
    )
    lines = [
        "| variant | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for name in order:
        if name in rows:
            row = rows[name]
            cells = " | ".join(_fmt(row.get(c)) for c in cols)
            lines.append(f"| {name} | {row['num_seeds']} | {cells} |")
    return "\n".join(lines)


def results_section(payload: Mapping[str, Any]) -> str:
    """The generated part of docs/RESULTS.md: tables straight from the cache."""
    order = [*BASELINE_NAMES, *(v.name for v in VARIANTS)]
    variants = payload["variants"]
    lines = [
        f"Data: `{payload['data']}`, session-disjoint split (seed "
        f"{payload['split']['seed']}; 80/10/10 sessions), full ranking over the "
        "catalogue with the service's exclusion rule (tracks skipped earlier in the "
        "session are never recommended). Mean ± std over seeds (baselines are "
        "deterministic). `ndcg_gap@10` = played − skipped NDCG@10 (higher = skips "
        "ranked lower); `skip_mrr@10` = MRR@10 of skipped targets (lower is better).",
        "",
        "### Session-disjoint test (MSSD development split)",
        "",
        variants_table(variants, order),
        "",
        "Variants:",
        "",
        *(f"- `{v.name}`: {v.description}" for v in VARIANTS if v.name in variants),
        "",
        "### λ sweep (SASRec + skip contrastive, first seed)",
        "",
        variants_table(payload["lambda_sweep"], [f"lambda={lam:g}" for lam in LAMBDAS]),
        "",
        "### Leave-one-out inside each session (the papers' protocol, first seed)",
        "",
        variants_table(payload["leave_one_out"], order),
    ]
    ml1m = payload["ml1m"].get("sasrec")
    if ml1m:
        lines += [
            "",
            "### ML-1M backbone check (SASRec + full-softmax CE, leave-one-out, "
            "full ranking)",
            "",
            "| model | NDCG@10 | HR@10 | train time (s) | best epoch |",
            "|---|---|---|---|---|",
            f"| ours | {_fmt(ml1m['ndcg@10'])} | {_fmt(ml1m['hr@10'])} | "
            f"{ml1m['train_seconds']['mean']:.0f} | {ml1m['best_epoch']['mean']:.0f} |",
            "| SASRec+CE (Klenitskiy & Vasilev, RecSys'23) | ≈0.18 | – | – | – |",
            "| gSASRec (Petrov & Macdonald, RecSys'23) | 0.1726 | – | – | – |",
        ]
    return "\n".join(lines)


def write_generated(path: Path, generated: str) -> None:
    """Replace the generated block of ``path``, keeping the hand-written text."""
    block = f"{BEGIN}\n{generated}\n{END}"
    text = path.read_text() if path.is_file() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + block + tail)
