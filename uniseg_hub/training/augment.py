"""Data augmentation of training patches with MONAI dictionary transforms.

The official recipe (nnU-Net v1 ``default_3D_augmentation_params`` as UniSeg uses them, elastic deformation off):
rotation ±30° (p 0.2), isotropic scaling 0.7-1.4 (p 0.2), Gaussian noise, brightness, contrast and gamma
(p 0.15 each), mirroring along every axis (p 0.5). MONAI draws from each transform's own ``RandomState``; the
engine reseeds the pipeline from the run's generator for every sample, so augmentation is reproducible and
resumes exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandZoomd,
)

from .config import TrainConfig

__all__ = ["build_augmentation", "augment_batch"]


def build_augmentation(config: TrainConfig) -> Compose | None:
    """The MONAI pipeline of ``config`` over ``{"image": (C, D, H, W), "label": (1, D, H, W)}``; ``None`` when off."""
    if not config.augment:
        return None
    keys = ["image", "label"]
    rad = math.radians(config.rotation_deg)
    transforms = []
    if config.rotation_prob > 0 and rad > 0:
        transforms.append(RandRotated(keys, range_x=rad, range_y=rad, range_z=rad, prob=config.rotation_prob,
                                      keep_size=True, mode=("bilinear", "nearest"), padding_mode="zeros"))
    low, high = config.scale_range
    if config.scale_prob > 0 and (low, high) != (1.0, 1.0):
        transforms.append(RandZoomd(keys, prob=config.scale_prob, min_zoom=low, max_zoom=high, keep_size=True,
                                    mode=("trilinear", "nearest"), padding_mode="constant"))
    p = config.intensity_prob
    if p > 0:
        transforms += [
            RandGaussianNoised("image", prob=p, std=0.1),
            RandScaleIntensityd("image", factors=0.25, prob=p),  # brightness x U(0.75, 1.25)
            RandScaleIntensityFixedMeand("image", factors=0.25, prob=p, preserve_range=True),  # contrast
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=p, retain_stats=True),  # gamma
        ]
    transforms += [RandFlipd(keys, prob=config.mirror_prob, spatial_axis=a) for a in config.mirror_axes if config.mirror_prob > 0]
    return Compose(transforms) if transforms else None


def augment_batch(pipeline: Compose | None, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  *, global_batch: int | None = None, part: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch sample by sample; ``images`` ``(B, C, *patch)``, ``labels`` ``(B, *patch)`` → tensors.

    The pipeline is reseeded from ``rng`` before each sample (one draw per sample, whether or not it is used),
    so the result depends only on ``rng``'s state. In a data-parallel run the batch is the slice ``part`` of a
    global batch of ``global_batch`` samples: a seed is drawn for every global sample and this slice's are used.
    """
    x, y = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(labels))
    if pipeline is None:
        return x, y
    seeds = [int(rng.integers(2**31 - 1)) for _ in range(global_batch or len(x))]
    if part is not None:
        seeds = seeds[part]
    if len(seeds) != len(x):
        raise ValueError(f"part {part} of a global batch of {global_batch} holds {len(seeds)} samples, got {len(x)}")
    out_x, out_y = [], []
    for img, lab, seed in zip(x, y, seeds):
        pipeline.set_random_state(seed=seed)
        d = pipeline({"image": img, "label": lab[None].float()})
        out_x.append(torch.as_tensor(d["image"]).as_subclass(torch.Tensor).float())
        out_y.append(torch.as_tensor(d["label"]).as_subclass(torch.Tensor)[0].round().long())
    return torch.stack(out_x), torch.stack(out_y)
