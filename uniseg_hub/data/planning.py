"""nnU-Net-v1-style planning and intensity normalisation of a downstream data set.

The official UniSeg downstream (BTCV, VS) converts the data to the nnU-Net raw layout and runs nnU-Net v1's
standard ``nnUNet_plan_and_preprocess`` (``Downstream/README``: ``nnUNet_plan_and_preprocess -t 60/61``), i.e.
``ExperimentPlanner3D_v21`` + ``GenericPreprocessor``. This module follows that code:

* **target spacing** (``ExperimentPlanner.get_target_spacing``): the median spacing of the data set; if the
  coarsest axis is more than 3x coarser than the others *and* has fewer than 1/3 of their voxels, that axis
  takes the 10th percentile of its spacings instead (but never finer than the other axes).
* **intensity properties** (``DatasetAnalyzer.collect_intensity_properties``): every 10th foreground voxel
  (label > 0) of every training case at its original resolution, pooled; mean, sd and the 0.5/99.5 percentiles.
* **normalisation** (``GenericPreprocessor.resample_and_normalize``): CT is clipped to the pooled 0.5/99.5
  percentiles and z-scored with the pooled foreground mean/sd; any other modality is z-scored per image, inside
  the nonzero mask when cropping to the nonzero region shrank the median case to less than 3/4 of its size
  (``ExperimentPlanner.determine_whether_to_use_mask_for_norm``), else over the whole image.

Spacing and shapes are ``(z, y, x)``: the reversed voxel order of the NIfTI array, as SimpleITK gives it to nnU-Net.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "DatasetPlan",
    "target_spacing",
    "intensity_properties",
    "use_mask_for_norm",
    "normalize_channel",
]

#: nnU-Net v1's ``RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD``.
ANISOTROPY_THRESHOLD = 3.0


@dataclass
class DatasetPlan:
    """What preprocessing a data set gets (JSON round trip with :meth:`to_dict` / :meth:`from_dict`).

    Attributes:
        spacing: target spacing ``(z, y, x)`` in mm.
        modalities: modality per input channel (``"CT"``, ``"MR"``, ...).
        intensity: per channel, the pooled foreground properties (``mean``, ``sd``, ``percentile_00_5``,
            ``percentile_99_5``) for CT channels, ``None`` otherwise.
        use_nonzero_mask: per channel, whether z-scoring is restricted to the nonzero region.
        source: how the plan was made (for logs and the benchmark table).
    """

    spacing: list[float]
    modalities: list[str]
    intensity: list[dict[str, float] | None] = field(default_factory=list)
    use_nonzero_mask: list[bool] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        self.spacing = [float(s) for s in self.spacing]
        if not self.intensity:
            self.intensity = [None] * len(self.modalities)
        if not self.use_nonzero_mask:
            self.use_nonzero_mask = [False] * len(self.modalities)
        if not len(self.modalities) == len(self.intensity) == len(self.use_nonzero_mask):
            raise ValueError(
                f"DatasetPlan: {len(self.modalities)} modalities but {len(self.intensity)} intensity entries and "
                f"{len(self.use_nonzero_mask)} use_nonzero_mask entries (expected one per channel)"
            )
        for m, props in zip(self.modalities, self.intensity):
            if m == "CT" and props is None:
                raise ValueError("DatasetPlan: a CT channel needs its foreground intensity properties")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatasetPlan":
        return cls(**data)


def target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], anisotropy_threshold: float = ANISOTROPY_THRESHOLD
) -> list[float]:
    """nnU-Net v1's target spacing of a data set.

    Args:
        spacings: ``(N, 3)`` per-case spacing ``(z, y, x)``.
        shapes: ``(N, 3)`` per-case shape after cropping to the nonzero region.

    Returns:
        ``[z, y, x]``: the median spacing, with the coarse axis of strongly anisotropic data set to the 10th
        percentile of its spacings.

    Example:
        >>> target_spacing([[5.0, 0.8, 0.8], [1.0, 0.8, 0.8], [5.0, 0.7, 0.7]], [[30, 512, 512]] * 3)
        [1.8, 0.8, 0.8]
    """
    sp = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
    sz = np.asarray(shapes, dtype=np.float64).reshape(-1, 3)
    if len(sp) == 0 or len(sp) != len(sz):
        raise ValueError(f"need one spacing and one shape per case, got {len(sp)} spacings and {len(sz)} shapes")
    target = np.percentile(sp, 50, axis=0)
    target_size = np.percentile(sz, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    other_spacings = [target[i] for i in others]
    aniso_spacing = target[worst] > anisotropy_threshold * max(other_spacings)
    aniso_voxels = target_size[worst] * anisotropy_threshold < min(target_size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        axis_target = float(np.percentile(sp[:, worst], 10))
        if axis_target < max(other_spacings):
            axis_target = max(max(other_spacings), axis_target) + 1e-5
        target[worst] = axis_target
    return [float(t) for t in target]


def intensity_properties(foreground_samples: Sequence[np.ndarray]) -> dict[str, float]:
    """Pooled foreground statistics of one channel (``DatasetAnalyzer`` of nnU-Net v1).

    Args:
        foreground_samples: per case, the voxels ``image[label > 0][::10]`` (1-D arrays).

    Returns:
        ``{"mean", "sd", "median", "min", "max", "percentile_00_5", "percentile_99_5"}``.
    """
    v = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in foreground_samples]) if foreground_samples else np.empty(0)
    if v.size == 0:
        raise ValueError("no foreground voxels (label > 0) in any training case: cannot compute CT intensity properties")
    return {
        "mean": float(v.mean()),
        "sd": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "percentile_00_5": float(np.percentile(v, 0.5)),
        "percentile_99_5": float(np.percentile(v, 99.5)),
    }


def use_mask_for_norm(modality: str, size_reductions: Sequence[float]) -> bool:
    """Whether z-scoring is restricted to the nonzero mask: never for CT; otherwise when cropping to the nonzero
    region left the median case with less than 3/4 of its voxels."""
    if modality == "CT" or not len(size_reductions):
        return False
    return bool(np.median(np.asarray(size_reductions, dtype=np.float64)) < 3 / 4)


def normalize_channel(
    image: np.ndarray, modality: str, props: dict[str, float] | None = None, mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalise one channel the nnU-Net v1 way.

    Args:
        image: ``(D, H, W)`` intensities.
        modality: ``"CT"`` (needs ``props``) or any other (per-image z-score).
        props: pooled foreground properties from :func:`intensity_properties` (CT only).
        mask: ``(D, H, W)`` bool; when given, z-scoring uses (and keeps) only the voxels inside, zero outside.

    Returns:
        ``(D, H, W)`` float32.
    """
    x = np.asarray(image, dtype=np.float32)
    if modality == "CT":
        if props is None:
            raise ValueError("CT normalisation needs the data set's foreground intensity properties (props=None given)")
        x = np.clip(x, props["percentile_00_5"], props["percentile_99_5"])
        return ((x - props["mean"]) / max(props["sd"], 1e-8)).astype(np.float32)
    if mask is not None:
        out = np.zeros_like(x)
        inside = x[mask]
        if inside.size:
            out[mask] = (inside - inside.mean()) / (inside.std() + 1e-8)
        return out
    return ((x - x.mean()) / (x.std() + 1e-8)).astype(np.float32)
