"""Per-class Dice (MONAI ``compute_dice``) and HD95 of a label map against the reference.

HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95)`` definition (surface voxels = mask minus its
6-connected erosion; the larger of the two directed 95th-percentile surface distances, in mm) but is computed in
torch with chunked ``cdist``, so it needs no scipy and runs on the GPU too.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice

__all__ = ["segmentation_metrics", "hd95_distance", "surface_voxels", "nanmean"]


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (``nan`` when there are none)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def surface_voxels(mask: torch.Tensor) -> torch.Tensor:
    """Voxels of a boolean ``(D, H, W)`` mask with a 6-neighbour outside it (outside the volume counts as outside)."""
    m = F.pad(mask[None, None].float(), (1, 1, 1, 1, 1, 1))
    eroded = mask.clone()
    for dim in (2, 3, 4):
        for shift in (-1, 1):
            eroded &= torch.roll(m, shift, dims=dim)[0, 0, 1:-1, 1:-1, 1:-1] > 0
    return mask & ~eroded


def _directed(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For every point of ``a`` (N, 3) the distance to the nearest point of ``b`` (M, 3)."""
    return torch.cat([torch.cdist(a[i:i + chunk], b).min(1).values for i in range(0, len(a), chunk)])


def hd95_distance(pred: torch.Tensor, ref: torch.Tensor, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two non-empty boolean ``(D, H, W)`` masks."""
    scale = torch.tensor(list(spacing) if spacing is not None else [1.0, 1.0, 1.0], dtype=torch.float64, device=pred.device)
    a = surface_voxels(pred).nonzero().double() * scale
    b = surface_voxels(ref).nonzero().double() * scale
    return float(torch.maximum(torch.quantile(_directed(a, b), 0.95), torch.quantile(_directed(b, a), 0.95)))


def segmentation_metrics(
    prediction: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    hd95: bool = True,
) -> dict[str, dict[int, float]]:
    """Dice and 95th-percentile Hausdorff distance of every foreground class.

    Args:
        prediction, reference: ``(D, H, W)`` integer label maps on the same grid.
        num_classes: classes including background; classes ``1..num_classes-1`` are scored.
        spacing: voxel spacing ``(z, y, x)`` in mm for HD95 (voxels when ``None``).

    Returns:
        ``{"dice": {c: value}, "hd95": {c: value}}``. Dice is ``nan`` when the class is absent from both maps and
        ``0`` when it is absent from only one; HD95 is ``nan`` unless the class is present in both.
    """
    pred = torch.as_tensor(np.asarray(prediction)).long()
    ref = torch.as_tensor(np.asarray(reference)).long()
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} must be (D, H, W) label maps of one shape")
    p = F.one_hot(pred.clamp(0, num_classes - 1), num_classes).permute(3, 0, 1, 2)[None].float()
    r = F.one_hot(ref.clamp(0, num_classes - 1), num_classes).permute(3, 0, 1, 2)[None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes; they are handled below
        dice = compute_dice(p, r, include_background=True, ignore_empty=False)[0]
    out: dict[str, dict[int, float]] = {"dice": {}, "hd95": {}}
    for c in range(1, num_classes):
        in_p, in_r = bool(p[0, c].any()), bool(r[0, c].any())
        out["dice"][c] = float("nan") if not (in_p or in_r) else float(dice[c])
        out["hd95"][c] = hd95_distance(pred == c, ref == c, spacing) if (in_p and in_r and hd95) else float("nan")
    return out
