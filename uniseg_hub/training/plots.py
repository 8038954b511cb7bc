"""Learning curves of a run (matplotlib, headless ``Agg`` backend): loss and validation Dice per epoch."""

from __future__ import annotations

import math
import os
from typing import Sequence

from ..plots.style import epoch_axis, new_figure, save_figure

__all__ = ["plot_curves"]


def _finite(xs: Sequence[int], ys: Sequence[float | None]) -> tuple[list[int], list[float]]:
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(history: Sequence[dict], path: str | os.PathLike, *, resumed_at: Sequence[int] = (), title: str | None = None) -> None:
    """Two panels: training (and validation) loss, and validation mean Dice, per epoch; a dashed line marks each
    epoch after which the run was resumed. The loss is nnU-Net's ``CE - Dice`` (it can be negative)."""
    fig, axes = new_figure(2)
    ax_loss, ax_dice = axes[0]
    epochs = [int(h["epoch"]) for h in history]
    for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        xs, ys = _finite(epochs, [h.get(key) for h in history])
        if xs:
            ax_loss.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    xs, ys = _finite(epochs, [h.get("val_mean_dice") for h in history])
    if xs:
        ax_dice.plot(xs, ys, marker="o", markersize=3, color="tab:green", label="validation mean Dice")
        ax_dice.set_ylim(0, 1)
    else:
        ax_dice.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_dice.transAxes)
    for ax, ylabel in ((ax_loss, "loss (CE − Dice, nnU-Net convention)"), (ax_dice, "mean Dice (foreground classes)")):
        epoch_axis(ax)
        ax.set_ylabel(ylabel)
        for i, e in enumerate(resumed_at):
            ax.axvline(e + 0.5, color="grey", linestyle="--", linewidth=1, label="resumed" if i == 0 else None)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    ax_loss.set_title("loss")
    ax_dice.set_title("validation (preprocessed arrays)")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
