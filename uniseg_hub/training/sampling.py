"""Training patches: random crops with foreground oversampling (nnU-Net v1's ``DataLoader3D`` rule).

Every random choice is drawn from a :class:`numpy.random.Generator` passed in by the caller, so a run is a pure
function of that generator's state (which the checkpoint stores for an exact ``--resume``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.case import Case

__all__ = ["PatchSampler", "PatchBatch", "crop_with_padding"]

#: foreground voxel locations kept per case and class (nnU-Net v1 keeps 10,000 for its class-locations file).
MAX_FOREGROUND_VOXELS = 10_000


@dataclass
class PatchBatch:
    """A batch of patches: ``images`` ``(B, C, *patch)`` float32, ``labels`` ``(B, *patch)`` int64, one task id
    (or ``None``) and case name per sample."""

    images: np.ndarray
    labels: np.ndarray
    task_ids: list[int | None]
    names: list[str]


def crop_with_padding(array: np.ndarray, lower: Sequence[int], size: Sequence[int], value: float = 0) -> np.ndarray:
    """The box ``[lower, lower + size)`` over the last three axes of ``array``; parts outside are ``value``."""
    spatial = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(size), value, dtype=array.dtype)
    src, dst = [], []
    for lo, n, dim in zip(lower, size, spatial):
        a, b = max(lo, 0), min(lo + n, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


class PatchSampler:
    """Draws training patches from labelled cases.

    A patch is centred on a random foreground voxel (of a randomly chosen foreground class present in the case)
    with probability ``oversample_foreground``, otherwise placed uniformly at random; volumes smaller than the
    patch are padded (image 0, label 0). Cases are drawn uniformly with replacement; the other samples of a batch
    are drawn among cases with the first one's channel count (UniSeg picks its stem by channel count).

    Args:
        cases: labelled :class:`~uniseg_hub.data.Case` objects.
        patch_size: ``(D, H, W)``.
        oversample_foreground: fraction of patches forced onto foreground.
    """

    def __init__(self, cases: Sequence[Case], patch_size: Sequence[int], oversample_foreground: float = 1 / 3) -> None:
        if not cases:
            raise ValueError("no training cases given")
        unlabelled = [c.name for c in cases if c.label is None]
        if unlabelled:
            raise ValueError(f"training cases need labels; these have none: {unlabelled[:5]}")
        self.cases = list(cases)
        self.patch_size = [int(p) for p in patch_size]
        self.oversample_foreground = float(oversample_foreground)
        pick = np.random.default_rng(1234)  # fixed: the stored locations do not depend on the run's seed
        self.fg_locations: list[dict[int, np.ndarray]] = []
        for case in self.cases:
            locs = {}
            for cls in np.unique(case.label):
                if cls == 0:
                    continue
                where = np.argwhere(case.label == cls)
                if len(where) > MAX_FOREGROUND_VOXELS:
                    where = where[np.sort(pick.choice(len(where), MAX_FOREGROUND_VOXELS, replace=False))]
                locs[int(cls)] = where
            self.fg_locations.append(locs)
        self.by_channels: dict[int, list[int]] = {}
        for i, case in enumerate(self.cases):
            self.by_channels.setdefault(case.image.shape[0], []).append(i)

    def _lower_corner(self, rng: np.random.Generator, index: int, force_fg: bool) -> list[int]:
        shape = self.cases[index].image.shape[1:]
        # allowed range of the lower corner: the patch may stick out of small volumes symmetrically
        lb = [min(0, (s - p) // 2) for s, p in zip(shape, self.patch_size)]
        ub = [max(s - p, l) for s, p, l in zip(shape, self.patch_size, lb)]
        locs = self.fg_locations[index]
        if force_fg and locs:
            cls = list(locs)[int(rng.integers(len(locs)))]
            voxel = locs[cls][int(rng.integers(len(locs[cls])))]
            return [int(np.clip(v - p // 2, l, u)) for v, p, l, u in zip(voxel, self.patch_size, lb, ub)]
        return [int(rng.integers(l, u + 1)) for l, u in zip(lb, ub)]

    def sample(self, rng: np.random.Generator, batch_size: int, part: slice | None = None) -> PatchBatch:
        """Draw one batch of ``batch_size`` patches.

        ``part`` (a data-parallel rank's slice of the global batch) crops only those samples, but every random
        choice of the whole batch is drawn, so ``rng`` advances as in a single process.
        """
        first = int(rng.integers(len(self.cases)))
        pool = self.by_channels[self.cases[first].image.shape[0]]
        indices = [first] + [pool[int(rng.integers(len(pool)))] for _ in range(batch_size - 1)]
        lowers = [self._lower_corner(rng, i, bool(rng.random() < self.oversample_foreground)) for i in indices]
        if part is not None:
            indices, lowers = indices[part], lowers[part]
        images, labels = [], []
        for i, lower in zip(indices, lowers):
            images.append(crop_with_padding(self.cases[i].image, lower, self.patch_size).astype(np.float32, copy=False))
            labels.append(crop_with_padding(self.cases[i].label, lower, self.patch_size).astype(np.int64, copy=False))
        return PatchBatch(
            images=np.stack(images),
            labels=np.stack(labels),
            task_ids=[self.cases[i].task_id for i in indices],
            names=[self.cases[i].name for i in indices],
        )
