"""Turn :class:`~uniseg_hub.data.raw.RawCase` files into preprocessed :class:`~uniseg_hub.data.Case` arrays.

Order as in nnU-Net v1's ``GenericPreprocessor``: crop to the nonzero region of the image channels → resample to
the plan's spacing → normalise (see :mod:`uniseg_hub.data.planning`). Voxel order is kept (no reorientation, like
nnU-Net v1) and arrays are returned as ``(C, z, y, x)`` = the reversed NIfTI voxel order SimpleITK gives.

IO, cropping and resampling are MONAI's (``NibabelReader``, ``CropForeground``, ``SpatialCrop``, ``Spacing``).
One deviation: nnU-Net v1 resamples images with 3rd-order splines (and labels with linear interpolation of the
one-hot maps); here images are resampled trilinearly and labels by nearest neighbour (MONAI's torch backend,
no scipy needed). For data already at or near the target spacing the difference is negligible.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import CropForeground, SpatialCrop, Spacing

from .case import Case
from .planning import DatasetPlan, intensity_properties, normalize_channel, target_spacing, use_mask_for_norm
from .raw import RawCase

__all__ = ["read_nifti", "load_raw", "plan_dataset", "preprocess_case", "load_cases"]

_log = logging.getLogger(__name__)


def read_nifti(path: str) -> MetaTensor:
    """One NIfTI file as a ``(1, X, Y, Z)`` float32 MetaTensor with its affine (MONAI's ``NibabelReader``)."""
    reader = NibabelReader(channel_dim=None)
    data, meta = reader.get_data(reader.read(str(path)))
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, found array shape {data.shape}")
    return MetaTensor(torch.as_tensor(np.asarray(data, dtype=np.float32)[None]), affine=torch.as_tensor(meta["affine"], dtype=torch.float64))


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return (x != 0).any(dim=0, keepdim=True)


def load_raw(raw: RawCase, crop: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Read a case's channels (and label) with MONAI, optionally cropped to the nonzero bounding box.

    Returns:
        ``image`` MetaTensor ``(C, X, Y, Z)`` (NIfTI voxel order, affine attached), ``label`` ``(1, X, Y, Z)`` or
        ``None``, and ``info`` with ``spacing`` ``(z, y, x)``, ``original_shape`` ``(z, y, x)``, ``bbox``.
    """
    chans = [read_nifti(p) for p in raw.images]
    shapes = {tuple(c.shape[1:]) for c in chans}
    if len(shapes) != 1:
        raise ValueError(f"case {raw.name!r}: channels have different grids {sorted(shapes)}; expected one grid for all")
    image = torch.cat(chans, dim=0) if len(chans) > 1 else chans[0]
    image.affine = chans[0].affine
    label = read_nifti(raw.label) if raw.label is not None else None
    if label is not None and tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(
            f"case {raw.name!r}: label grid {tuple(label.shape[1:])} differs from image grid {tuple(image.shape[1:])}"
        )
    spacing_xyz = [float(s) for s in torch.linalg.norm(image.affine[:3, :3].double(), dim=0)]
    info = {"spacing": spacing_xyz[::-1], "original_shape": list(image.shape[1:])[::-1], "bbox": None}
    if crop:
        start, end = CropForeground(select_fn=_nonzero, allow_smaller=True).compute_bounding_box(image)
        if np.all(end > start):
            cropper = SpatialCrop(roi_start=start, roi_end=end)
            image = cropper(image)
            label = cropper(label) if label is not None else None
            info["bbox"] = [[int(s), int(e)] for s, e in zip(start, end)][::-1]
    return image, label, info


def plan_dataset(raw_cases: Sequence[RawCase], modalities: Sequence[str], *, source: str = "") -> DatasetPlan:
    """Plan a data set from its training cases the nnU-Net v1 way (spacing, CT foreground stats, mask use).

    Args:
        raw_cases: the training cases (labels needed for CT channels).
        modalities: modality per input channel, e.g. ``["CT"]`` or ``["MR"]``.
    """
    if not raw_cases:
        raise ValueError("plan_dataset needs at least one training case, got none")
    spacings, shapes, reductions = [], [], []
    samples: list[list[np.ndarray]] = [[] for _ in modalities]
    for raw in raw_cases:
        image, label, info = load_raw(raw, crop=True)
        if image.shape[0] != len(modalities):
            raise ValueError(f"case {raw.name!r} has {image.shape[0]} channels; the data set declares {len(modalities)} ({list(modalities)})")
        cropped = list(image.shape[1:])[::-1]
        spacings.append(info["spacing"])
        shapes.append(cropped)
        reductions.append(float(np.prod(cropped)) / float(np.prod(info["original_shape"])))
        if label is not None:  # every 10th foreground voxel in nnU-Net's (z, y, x) array order
            fg = label[0].numpy().transpose(2, 1, 0) > 0
            for c, m in enumerate(modalities):
                if m == "CT":
                    samples[c].append(image[c].numpy().transpose(2, 1, 0)[fg][::10])
    intensity = [intensity_properties(samples[c]) if m == "CT" else None for c, m in enumerate(modalities)]
    plan = DatasetPlan(
        spacing=target_spacing(spacings, shapes),
        modalities=list(modalities),
        intensity=intensity,
        use_nonzero_mask=[use_mask_for_norm(m, reductions) for m in modalities],
        source=source or f"nnU-Net v1 planning of {len(raw_cases)} training cases",
    )
    _log.info("planned %s: spacing (z, y, x) %s, nonzero-mask norm %s", source or "data set", plan.spacing, plan.use_nonzero_mask)
    return plan


def preprocess_case(raw: RawCase, plan: DatasetPlan, task_id: int | None = None) -> Case:
    """Crop, resample to ``plan.spacing`` and normalise one case.

    Returns:
        a :class:`Case` with ``image`` ``(C, D, H, W)`` float32 and ``label`` ``(D, H, W)`` int16 (or ``None``);
        ``meta`` records the source files, original spacing/shape and the crop box (all ``(z, y, x)``).
    """
    image, label, info = load_raw(raw, crop=True)
    pixdim = plan.spacing[::-1]  # MONAI works in the array's (x, y, z) voxel order
    image = Spacing(pixdim=pixdim, mode="bilinear", padding_mode="border", dtype=np.float32)(image)
    img = np.ascontiguousarray(image.numpy().transpose(0, 3, 2, 1))
    lab = None
    if label is not None:
        label = Spacing(pixdim=pixdim, mode="nearest", padding_mode="zeros", dtype=np.float32)(label)
        lab = np.ascontiguousarray(np.rint(label.numpy()[0]).astype(np.int16).transpose(2, 1, 0))
    mask = (img != 0).any(axis=0)
    out = np.stack(
        [
            normalize_channel(img[c], m, plan.intensity[c], mask if plan.use_nonzero_mask[c] else None)
            for c, m in enumerate(plan.modalities)
        ]
    )
    meta = {"images": [str(p) for p in raw.images], "label": str(raw.label) if raw.label else None, **info}
    return Case(raw.name, out.astype(np.float32), lab, tuple(plan.spacing), task_id=task_id, meta=meta)


def load_cases(raw_cases: Sequence[RawCase], plan: DatasetPlan, task_id: int | None = None) -> list[Case]:
    """:func:`preprocess_case` over a list, logging progress."""
    out = []
    for i, raw in enumerate(raw_cases):
        out.append(preprocess_case(raw, plan, task_id))
        _log.info("preprocessed %s (%d/%d): %s", raw.name, i + 1, len(raw_cases), tuple(out[-1].image.shape))
    return out
