"""Loss and Dice curves drawn with pillow (no matplotlib dependency)."""

from __future__ import annotations

import math
import os
from typing import Sequence

from PIL import Image, ImageDraw

__all__ = ["plot_curves"]

_COLOURS = {"train_loss": (31, 119, 180), "val_loss": (255, 127, 14), "val_mean_dice": (44, 160, 44)}


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], series: dict[str, Sequence[float]],
           epochs: Sequence[int], title: str) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not values or not epochs:
        draw.text((x0 + 8, y0 + 8), "no data yet", fill=(120, 120, 120))
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    e_lo, e_hi = min(epochs), max(max(epochs), min(epochs) + 1)

    def xy(e: float, v: float) -> tuple[float, float]:
        return (x0 + 8 + (e - e_lo) / (e_hi - e_lo) * (x1 - x0 - 16), y1 - 8 - (v - lo) / (hi - lo) * (y1 - y0 - 16))

    draw.text((x1 + 4, y0), f"{hi:.3g}", fill=(0, 0, 0))
    draw.text((x1 + 4, y1 - 12), f"{lo:.3g}", fill=(0, 0, 0))
    draw.text((x0, y1 + 2), f"epoch {e_lo}", fill=(0, 0, 0))
    draw.text((x1 - 60, y1 + 2), f"epoch {max(epochs)}", fill=(0, 0, 0))
    for i, (name, vals) in enumerate(series.items()):
        colour = _COLOURS.get(name, (0, 0, 0))
        pts = [xy(e, v) for e, v in zip(epochs, vals) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for px, py in pts:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.text((x0 + 10 + 110 * i, y0 + 4), name, fill=colour)


def plot_curves(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Write a PNG with two panels: training/validation loss and validation mean Dice per epoch."""
    img = Image.new("RGB", (640, 480), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    epochs = [int(h["epoch"]) for h in history]
    losses = {"train_loss": [h.get("train_loss") for h in history]}
    if any(h.get("val_loss") is not None for h in history):
        losses["val_loss"] = [h.get("val_loss") for h in history]
    _panel(draw, (40, 30, 560, 220), losses, epochs, "loss")
    _panel(draw, (40, 270, 560, 450), {"val_mean_dice": [h.get("val_mean_dice") for h in history]}, epochs, "validation mean Dice")
    tmp = f"{path}.tmp.png"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
