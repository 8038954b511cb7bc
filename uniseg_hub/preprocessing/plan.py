"""nnU-Net v1 planning of a data set: its :class:`~uniseg_hub.config.PreprocessingConfig` from the training cases.

The official UniSeg downstream (BTCV, VS) runs nnU-Net v1's ``nnUNet_plan_and_preprocess``
(``DatasetAnalyzer`` + ``ExperimentPlanner3D_v21``); this module follows that code:

* **target spacing** (``ExperimentPlanner3D_v21.get_target_spacing``): the median spacing; if the coarsest axis is
  more than 3x coarser than the others *and* has fewer than 1/3 of their voxels (median sizes after cropping to
  the nonzero region), that axis takes the 10th percentile of its spacings instead (never finer than the others).
* **scheme** (``determine_normalization_scheme``): modality ``"CT"`` / ``"ct"`` → ``ct`` with the pooled
  foreground statistics (``DatasetAnalyzer.collect_intensity_properties``: every 10th voxel with label > 0 of
  every cropped training case at its original resolution; mean, sd (``np.std``), 0.5 / 99.5 percentiles); any
  other modality → ``zscore``.
* **nonzero mask** (``determine_whether_to_use_mask_for_norm``): never for modality names containing ``"CT"``;
  otherwise when cropping to the nonzero region left the median case with less than 3/4 of its voxels.

Spacing and shapes are ``(z, y, x)``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..config import PreprocessingConfig
from ..data.raw import RawCase
from .crop import bbox_of, nonzero_mask
from .io import load_image, load_label
from .resample import ANISOTROPY_THRESHOLD

__all__ = ["target_spacing", "intensity_properties", "use_mask_for_norm", "plan_dataset"]

_log = logging.getLogger(__name__)


def target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], anisotropy_threshold: float = ANISOTROPY_THRESHOLD
) -> list[float]:
    """nnU-Net v1's target spacing of a data set (``ExperimentPlanner3D_v21.get_target_spacing``).

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
    """Pooled foreground statistics of one channel (``DatasetAnalyzer.compute_stats`` of nnU-Net v1), in float64.

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
    """Whether normalisation is restricted to the nonzero mask: never for a modality name containing ``"CT"``;
    otherwise when cropping to the nonzero region left the median case with less than 3/4 of its voxels."""
    if "CT" in modality or not len(size_reductions):
        return False
    return bool(np.median(np.asarray(size_reductions, dtype=np.float64)) < 3 / 4)


def _is_ct_scheme(modality: str) -> bool:
    return modality in ("CT", "ct")  # nnU-Net v1 determine_normalization_scheme


def _scheme(channel: int, modality: str, props: dict[str, float] | None, use_mask: bool) -> dict[str, Any]:
    if modality == "noNorm":
        raise ValueError(f"channel {channel}: modality 'noNorm' (nnU-Net's no-normalisation) is not supported; name the modality")
    if props is None:
        return {"scheme": "zscore", "use_nonzero_mask": use_mask}
    if not (props["sd"] > 0 and props["percentile_00_5"] < props["percentile_99_5"]):
        raise ValueError(
            f"channel {channel} ({modality}): the foreground intensities of the training cases are (nearly) constant "
            f"(sd {props['sd']:g}, percentiles 0.5/99.5 {props['percentile_00_5']:g}/{props['percentile_99_5']:g}): "
            "cannot plan the CT normalisation"
        )
    return {"scheme": "ct", "mean": props["mean"], "sd": props["sd"], "low": props["percentile_00_5"],
            "high": props["percentile_99_5"], "use_nonzero_mask": use_mask}


def plan_dataset(raw_cases: Sequence[RawCase], modalities: Sequence[str], *, source: str = "") -> PreprocessingConfig:
    """Plan a data set from its training cases the nnU-Net v1 way: target spacing and one scheme per modality.

    Every case is read once (images, and the label map where a CT channel needs foreground statistics).

    Args:
        raw_cases: the training cases (labels needed for CT channels).
        modalities: modality name per input channel, as in ``dataset.json`` (``["CT"]``, ``["T1", "FLAIR"]``).
        source: how the plan was made, recorded in ``PreprocessingConfig.source``.

    Returns:
        a :class:`PreprocessingConfig` with ``normalization`` keyed by modality name.

    Raises:
        ValueError: no cases; a case with another channel count; CT without foreground; two channels with the
            same modality name but different schemes (name them apart in ``dataset.json``).
    """
    if not raw_cases:
        raise ValueError("plan_dataset needs at least one training case, got none")
    modalities = [str(m) for m in modalities]
    ct = [c for c, m in enumerate(modalities) if _is_ct_scheme(m)]
    spacings, shapes, reductions = [], [], []
    samples: dict[int, list[np.ndarray]] = {c: [] for c in ct}
    for raw in raw_cases:
        image = load_image(raw.images)
        if image.array.shape[0] != len(modalities):
            raise ValueError(
                f"case {raw.name!r} has {image.array.shape[0]} channel(s); the data set declares {len(modalities)} ({modalities})"
            )
        bbox = bbox_of(nonzero_mask(image.array))
        cropped = [b - a for a, b in bbox]
        spacings.append(image.spacing)
        shapes.append(cropped)
        reductions.append(float(np.prod(cropped)) / float(np.prod(image.array.shape[1:])))
        if ct and raw.label is not None:  # every 10th foreground voxel of the cropped case, in (z, y, x) C order
            box = tuple(slice(a, b) for a, b in bbox)
            fg = load_label(raw.label, image)[box] > 0
            for c in ct:
                samples[c].append(image.array[c][box][fg][::10])
    props = {c: intensity_properties(samples[c]) for c in ct}
    normalization: dict[str, dict[str, Any]] = {}
    for c, m in enumerate(modalities):
        spec = _scheme(c, m, props.get(c), use_mask_for_norm(m, reductions))
        if m in normalization and normalization[m] != spec:
            raise ValueError(
                f"channels {modalities.index(m)} and {c} are both named {m!r} but need different normalisation "
                f"({normalization[m]} vs {spec}): give every channel a distinct modality name in dataset.json "
                "(e.g. 'CT' and 'CT2', or 'T1' and 'T1ce')"
            )
        normalization[m] = spec
    plan = PreprocessingConfig(
        spacing=target_spacing(spacings, shapes),
        normalization=normalization,
        source=source or f"nnU-Net v1 plan of {len(raw_cases)} training cases",
    )
    _log.info("planned %s: spacing (z, y, x) %s, normalisation %s", plan.source, plan.spacing, plan.normalization)
    return plan
