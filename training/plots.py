"""Training curves of a run as a PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(
    history: Sequence[Mapping[str, float]], path: Path, title: str = ""
) -> None:
    """Train loss per epoch (left axis) and validation NDCG@10 (right axis) to ``path``.

    ``history`` rows are the per-epoch log entries of ``training.trainer``: ``epoch``,
    ``train_loss`` and, on evaluated epochs, ``val_ndcg@10``.
    """
    epochs = [row["epoch"] for row in history]
    losses = [row["train_loss"] for row in history]
    evaluated = [row for row in history if "val_ndcg@10" in row]
    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        loss_axis.plot(epochs, losses, color="tab:blue", marker=".", label="train loss")
        loss_axis.set_xlabel("epoch")
        loss_axis.set_ylabel("train loss", color="tab:blue")
        ndcg_axis = loss_axis.twinx()
        ndcg_axis.plot(
            [row["epoch"] for row in evaluated],
            [row["val_ndcg@10"] for row in evaluated],
            color="tab:orange",
            marker="o",
            label="validation NDCG@10",
        )
        ndcg_axis.set_ylabel("validation NDCG@10", color="tab:orange")
        if evaluated:
            best = max(evaluated, key=lambda row: row["val_ndcg@10"])
            ndcg_axis.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
        loss_axis.set_title(title or "training curves")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
