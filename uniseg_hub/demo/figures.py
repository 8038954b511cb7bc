"""The demo's pictures (matplotlib, headless): segmentations side by side with a legend, learning curves.

* :func:`comparison_preview` — rows reference / pretrained / from scratch, columns axial / coronal / sagittal
  slices through the validation scan (slice positions in the titles), labels coloured with a legend naming each
  class.
* :func:`learning_curves` — training loss and validation mean Dice per epoch of both runs; with several seeds the
  mean and a band of ± one standard deviation; epochs after which a run was resumed are marked.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np

from ..plots.style import epoch_axis, new_figure, save_figure

__all__ = ["CLASS_COLOURS", "comparison_preview", "learning_curves"]

#: Colour of class 1, 2, ... (matplotlib's tab10 without grey).
CLASS_COLOURS: tuple[str, ...] = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:cyan",
                                  "tab:pink", "tab:olive", "tab:brown")
_RUN_COLOURS = {"pretrained": "tab:blue", "from_scratch": "tab:red"}


def _window(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return (float(lo), float(hi)) if hi > lo else (float(image.min()), float(image.max()) + 1e-6)


def comparison_preview(
    path: str | os.PathLike,
    image: np.ndarray,
    label_maps: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    center: Sequence[int] | None = None,
    title: str | None = None,
    captions: Mapping[str, str] | None = None,
) -> str:
    """Write a PNG of orthogonal slices: one row per label map (e.g. reference, pretrained, from scratch).

    Args:
        image: ``(Z, Y, X)`` intensities; label_maps: name → ``(Z, Y, X)`` class-index maps of the same shape.
        class_names: foreground class names (class ``c`` is ``class_names[c - 1]``), shown in the legend.
        spacing: ``(z, y, x)`` mm for the aspect ratio; center: slice indices (default: the reference's
            foreground centre).
        captions: text under each row's name (e.g. its mean Dice).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    image = np.asarray(image, dtype=np.float32)
    rows = list(label_maps.items())
    if center is None:
        fg = np.argwhere(np.asarray(rows[0][1]) > 0)
        center = fg.mean(0).round().astype(int) if len(fg) else np.array(image.shape) // 2
    z, y, x = (int(c) for c in center)
    sz, sy, sx = (float(s) for s in spacing)
    lo, hi = _window(image)
    k = len(class_names)
    cmap = ListedColormap([CLASS_COLOURS[i % len(CLASS_COLOURS)] for i in range(k)])
    views = [
        (f"axial, z = {z} ({z * sz:.0f} mm)", lambda a: a[z], sy / sx),
        (f"coronal, y = {y} ({y * sy:.0f} mm)", lambda a: a[:, y], sz / sx),
        (f"sagittal, x = {x} ({x * sx:.0f} mm)", lambda a: a[:, :, x], sz / sy),
    ]
    fig, axes = new_figure(3, len(rows), width=3.2, height=2.9)
    for r, (name, labels) in enumerate(rows):
        labels = np.asarray(labels)
        for c, (vtitle, cut, aspect) in enumerate(views):
            ax = axes[r][c]
            ax.imshow(cut(image), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
            lab = cut(labels).astype(float)
            ax.imshow(np.ma.masked_where(lab <= 0, lab), cmap=cmap, vmin=0.5, vmax=k + 0.5, alpha=0.6, origin="lower",
                      aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(vtitle, fontsize=9)
            if c == 0:
                caption = (captions or {}).get(name, "")
                ax.set_ylabel(name + (f"\n{caption}" if caption else ""), fontsize=9)
    handles = [Patch(color=CLASS_COLOURS[i % len(CLASS_COLOURS)], label=n) for i, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return str(path)


def _series(histories: Sequence[Sequence[dict]], key: str) -> tuple[list[int], np.ndarray]:
    """Epochs where every run has a finite ``key``, and the ``(runs, epochs)`` values."""
    per_run = [{int(h["epoch"]): h[key] for h in hist if h.get(key) is not None and math.isfinite(h[key])} for hist in histories]
    epochs = sorted(set.intersection(*[set(d) for d in per_run])) if per_run else []
    return epochs, np.array([[d[e] for e in epochs] for d in per_run], dtype=np.float64)


def learning_curves(
    path: str | os.PathLike,
    runs: Mapping[str, Sequence[Sequence[dict]]],
    *,
    resumed_at: Mapping[str, Sequence[int]] | None = None,
    title: str | None = None,
) -> str:
    """Write a PNG with training loss and validation mean Dice per epoch.

    Args:
        runs: run name (``"pretrained"``, ``"from_scratch"``) → one training history per seed (``log.json``'s
            ``history``). One seed: a line per run; several: the mean over seeds and a ± sd band.
        resumed_at: run name → epochs after which it was resumed (dashed vertical lines).
    """
    fig, axes = new_figure(2, width=5.2, height=3.8)
    ax_loss, ax_dice = axes[0]
    n_seeds = max((len(h) for h in runs.values()), default=0)
    for name, histories in runs.items():
        colour = _RUN_COLOURS.get(name, None)
        label = name.replace("_", " ") + (f" (mean ± sd of {len(histories)} seeds)" if len(histories) > 1 else "")
        for ax, key in ((ax_loss, "train_loss"), (ax_dice, "val_mean_dice")):
            epochs, values = _series(histories, key)
            if not epochs:
                continue
            mean = values.mean(0)
            ax.plot(epochs, mean, color=colour, label=label, marker="o" if len(epochs) <= 12 else None, markersize=3)
            if len(histories) > 1:
                sd = values.std(0, ddof=1)
                ax.fill_between(epochs, mean - sd, mean + sd, color=colour, alpha=0.2, linewidth=0)
        for e in (resumed_at or {}).get(name, []):
            for ax in (ax_loss, ax_dice):
                ax.axvline(e + 0.5, color=colour, linestyle="--", linewidth=1)
    if any((resumed_at or {}).values()):
        ax_loss.plot([], [], color="grey", linestyle="--", label="resumed after this epoch")
    ax_loss.set_title("training loss")
    ax_loss.set_ylabel("loss (CE − Dice, nnU-Net convention)")
    ax_dice.set_title("validation mean Dice (held-out hemisphere)")
    ax_dice.set_ylabel("mean Dice over the classes")
    ax_dice.set_ylim(0, 1)
    for ax in (ax_loss, ax_dice):
        epoch_axis(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    if title or n_seeds:
        fig.suptitle(title or "", fontsize=10)
    save_figure(fig, path)
    return str(path)
