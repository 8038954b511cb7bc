"""A PNG preview: a segmentation overlaid on three orthogonal slices of its scan (pillow only)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["LABEL_COLORS", "render_preview", "save_preview"]

#: RGB colour of label 1, 2, ... (cycled); background stays transparent.
LABEL_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
)


def _window(image: np.ndarray) -> np.ndarray:
    """Intensities → uint8 between the 1st and 99th percentile."""
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max()) + 1e-6
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _panel(gray: np.ndarray, lab: np.ndarray, alpha: float, aspect: float, height: int) -> Image.Image:
    """One 2D slice (rows, cols) → RGB with the labels blended in, resized to ``height`` keeping mm aspect."""
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    for value in np.unique(lab):
        if value == 0:
            continue
        color = np.array(LABEL_COLORS[(int(value) - 1) % len(LABEL_COLORS)], dtype=np.float32)
        m = lab == value
        rgb[m] = (1 - alpha) * rgb[m] + alpha * color
    img = Image.fromarray(np.flipud(rgb.clip(0, 255).astype(np.uint8)))  # world "up" (superior/anterior) on top
    width = max(1, int(round(height * gray.shape[1] / (gray.shape[0] * aspect))))
    return img.resize((width, height), Image.NEAREST)


def render_preview(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    center: Sequence[int] | None = None,
    alpha: float = 0.5,
    height: int = 256,
) -> Image.Image:
    """Axial, coronal and sagittal slices side by side with ``labels`` overlaid.

    Args:
        image: ``(Z, Y, X)`` intensities (nnU-Net order); labels: same shape, integer label map.
        spacing: ``(z, y, x)`` mm, for the aspect ratio of each panel.
        center: slice indices ``(z, y, x)``; default: the foreground's centre of mass (volume centre if empty).
        alpha: label opacity; height: panel height in pixels.

    Returns:
        an RGB :class:`PIL.Image.Image` of height ``height``.
    """
    image, labels = np.asarray(image, dtype=np.float32), np.asarray(labels)
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(f"need a 3D image and a label map of the same shape, got {image.shape} and {labels.shape}")
    if center is None:
        fg = np.argwhere(labels > 0)
        center = fg.mean(0).round().astype(int) if len(fg) else np.array(image.shape) // 2
    z, y, x = (int(c) for c in center)
    gray = _window(image)
    sz, sy, sx = (float(s) for s in spacing)
    panels = [
        _panel(gray[z], labels[z], alpha, sy / sx, height),  # axial: rows y, cols x
        _panel(gray[:, y], labels[:, y], alpha, sz / sx, height),  # coronal: rows z, cols x
        _panel(gray[:, :, x], labels[:, :, x], alpha, sz / sy, height),  # sagittal: rows z, cols y
    ]
    out = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), height), (0, 0, 0))
    offset = 0
    for p in panels:
        out.paste(p, (offset, 0))
        offset += p.width + 4
    return out


def save_preview(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray, **kwargs) -> str:
    """:func:`render_preview` written to ``path`` (PNG); returns the path."""
    render_preview(image, labels, **kwargs).save(str(path), format="PNG")
    return str(path)
