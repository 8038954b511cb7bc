"""Figures without global state: a matplotlib figure on the headless ``Agg`` canvas, saved atomically."""

from __future__ import annotations

import os

from ..atomic import atomic_file

__all__ = ["new_figure", "save_figure", "epoch_axis"]


def new_figure(ncols: int, nrows: int = 1, width: float = 5.0, height: float = 3.6):
    """``(figure, axes[nrows][ncols])`` on the ``Agg`` canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as PNG atomically (:func:`uniseg_hub.atomic.atomic_file`: temporary file, then rename)."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")


def epoch_axis(ax) -> None:
    """An x axis of epochs: labelled, whole-number ticks, a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
