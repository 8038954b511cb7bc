"""Training patches as nnU-Net v1's ``DataLoader3D`` draws them (foreground oversampling per batch position).

The official recipe samples an *oversized* patch (:func:`sampling_patch_size`, nnU-Net's
``basic_generator_patch_size``) so that rotating and scaling it (:mod:`.augment`) and cropping the centre leaves no
empty corners; the network sees the centre crop of the training patch size.

Every random choice is drawn from a :class:`numpy.random.Generator` passed in by the caller, so a run is a pure
function of that generator's state (which the checkpoint stores for an exact ``--resume``). Only the stored
foreground locations use their own fixed generator (seed 1234, as nnU-Net's preprocessing), so they do not depend
on the run's seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.case import Case
from .augment import rotation_matrix
from .config import AugmentationConfig

__all__ = ["PatchSampler", "PatchBatch", "crop_with_padding", "sampling_patch_size", "sample_class_locations"]

#: foreground voxel locations kept per case and class (nnU-Net v1 ``_sample_class_locations``) ...
MAX_FOREGROUND_VOXELS = 10_000
#: ... but at least this fraction of a class's voxels.
MIN_FOREGROUND_COVERAGE = 0.01


def _rotate_coords_3d(coords: np.ndarray, angle_x: float, angle_y: float, angle_z: float) -> np.ndarray:
    """batchgenerators' ``rotate_coords_3d`` for one point: ``coords @ (Rx @ Ry @ Rz)``."""
    return np.dot(coords.reshape(1, 3), rotation_matrix((angle_x, angle_y, angle_z)))[0]


def sampling_patch_size(patch_size: Sequence[int], aug: AugmentationConfig | None) -> list[int]:
    """The size patches are sampled at before augmentation (nnU-Net v1 ``get_patch_size``).

    With rotation or scaling enabled (``aug.spatial``) this is the box that holds the training patch rotated by
    up to ``rotation_deg`` about each axis alone, divided by the smallest scale factor; otherwise (or with
    ``aug=None``) the training patch itself. Example: ``[32, 64, 64]`` with the official defaults (30°, scale
    0.7-1.4) gives ``[85, 124, 102]``; ``[64, 192, 192]`` gives ``[216, 374, 283]``.

    Args:
        patch_size: the training patch ``(D, H, W)``.
        aug: the augmentation recipe, or ``None`` when augmentation is off.
    """
    patch = [int(p) for p in patch_size]
    if aug is None or not aug.spatial:
        return patch
    rot = min(math.radians(aug.rotation_deg), math.pi / 2) if aug.p_rot > 0 else 0.0
    low = min(aug.scale_range[0], 1.0) if aug.p_scale > 0 else 1.0
    coords = np.array(patch)
    final = np.copy(coords).astype(float)
    for angles in ((rot, 0, 0), (0, rot, 0), (0, 0, rot)):
        final = np.max(np.vstack((np.abs(_rotate_coords_3d(coords, *angles)), final)), 0)
    final /= low
    return [max(int(f), p) for f, p in zip(final.astype(int), patch)]


def sample_class_locations(label: np.ndarray, seed: int = 1234) -> dict[int, np.ndarray]:
    """Stored voxel locations of every foreground class (label > 0) present in ``label`` ``(D, H, W)``.

    nnU-Net v1's ``_sample_class_locations``: per class, ``max(min(10000, n), ceil(0.01 n))`` of its ``n`` voxels,
    without replacement, from one ``RandomState(seed)`` per case used class after class in ascending order.
    Returns ``{class: (k, 3) int64 array}``.
    """
    rs = np.random.RandomState(seed)
    locs: dict[int, np.ndarray] = {}
    for cls in np.unique(label):
        if cls <= 0:
            continue
        where = np.argwhere(label == cls)
        n = len(where)
        k = max(min(MAX_FOREGROUND_VOXELS, n), int(np.ceil(n * MIN_FOREGROUND_COVERAGE)))
        locs[int(cls)] = where[rs.choice(n, k, replace=False)]
    return locs


@dataclass
class PatchBatch:
    """A batch of (sampling-size) patches.

    Attributes:
        images: ``(B, C, *S)`` float32, padded with 0 outside the case.
        labels: ``(B, *S)`` int64, -1 outside the case (and wherever the case marks voxels outside its nonzero
            region), as nnU-Net's data loader hands them to the augmentation.
        task_ids, names: per sample.
        forced_fg: per sample, whether the patch was placed on a stored foreground voxel (a position forced onto
            foreground whose case has no foreground falls back to a random patch and is ``False``).
    """

    images: np.ndarray
    labels: np.ndarray
    task_ids: list[int | None]
    names: list[str]
    forced_fg: list[bool]


def crop_with_padding(array: np.ndarray, lower: Sequence[int], size: Sequence[int], value: float = 0,
                      dtype=None) -> np.ndarray:
    """The box ``[lower, lower + size)`` over the last three axes of ``array``; parts outside are ``value``.

    ``dtype`` is the output's (default ``array.dtype``; give a signed type to pad an unsigned label map with -1).
    """
    spatial = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(size), value, dtype=dtype or array.dtype)
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
    """Draws training patches from labelled cases the way nnU-Net v1's ``DataLoader3D`` does.

    * Cases are drawn uniformly with replacement; all samples of a batch share the first one's channel count
      (UniSeg picks its stem by channel count), so the others are drawn among those cases.
    * Position ``j`` of a batch of ``B`` is forced onto foreground iff ``not j < round(B * (1 - p))`` (``p`` =
      ``oversample_foreground``; with B = 2 and p = 0.33 the second sample always, the first never). A forced
      patch is centred on a random stored voxel of a random foreground class of the case (lower corner
      ``max(lb, voxel - S // 2)``); a case without foreground falls back to a random patch.
    * Random patches have their lower corner uniform in ``[lb, ub]`` with ``lb = -need // 2``,
      ``ub = shape + need // 2 + need % 2 - S`` and ``need = S - patch_size`` (enlarged to ``S - shape`` where the
      case is smaller than ``S``): patches may stick out of the case by half the extra margin on each side.
    * Images are padded with 0, labels with -1.

    Args:
        cases: labelled :class:`~uniseg_hub.data.Case` objects (labels: class indices, -1 outside the nonzero
            region).
        patch_size: the training patch ``(D, H, W)`` (nnU-Net's ``final_patch_size``).
        oversample_foreground: nnU-Net's ``oversample_foreground_percent`` (0.33 officially).
        sampling_patch_size: the size ``S`` patches are cut at (default ``patch_size``); see
            :func:`sampling_patch_size`.
    """

    def __init__(self, cases: Sequence[Case], patch_size: Sequence[int], oversample_foreground: float = 0.33,
                 sampling_patch_size: Sequence[int] | None = None) -> None:
        if not cases:
            raise ValueError("no training cases given")
        unlabelled = [c.name for c in cases if c.label is None]
        if unlabelled:
            raise ValueError(f"training cases need labels; these have none: {unlabelled[:5]}")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise ValueError(f"oversample_foreground must be in [0, 1], got {oversample_foreground}")
        self.cases = list(cases)
        self.patch_size = [int(p) for p in patch_size]
        self.sampling_patch_size = [int(p) for p in (sampling_patch_size or patch_size)]
        if len(self.patch_size) != 3 or len(self.sampling_patch_size) != 3 or any(
                s < p for s, p in zip(self.sampling_patch_size, self.patch_size)):
            raise ValueError(f"sampling_patch_size {self.sampling_patch_size} must be 3 sizes >= patch_size "
                             f"{self.patch_size}")
        self.oversample_foreground = float(oversample_foreground)
        self.fg_locations: list[dict[int, np.ndarray]] = [sample_class_locations(c.label) for c in self.cases]
        self.by_channels: dict[int, list[int]] = {}
        for i, case in enumerate(self.cases):
            self.by_channels.setdefault(case.image.shape[0], []).append(i)

    def force_foreground(self, position: int, batch_size: int) -> bool:
        """nnU-Net's ``get_do_oversample``: whether batch position ``position`` is forced onto foreground."""
        return not position < round(batch_size * (1 - self.oversample_foreground))

    def bounds(self, index: int) -> tuple[list[int], list[int]]:
        """The range ``[lb, ub]`` (inclusive, per axis) of the lower patch corner in case ``index``."""
        shape = self.cases[index].image.shape[1:]
        lb, ub = [], []
        for s, p, f in zip(shape, self.sampling_patch_size, self.patch_size):
            need = p - f
            if need + s < p:
                need = p - s
            lb.append(-need // 2)
            ub.append(s + need // 2 + need % 2 - p)
        return lb, ub

    def _lower_corner(self, rng: np.random.Generator, index: int, force_fg: bool) -> tuple[list[int], bool]:
        lb, ub = self.bounds(index)
        locs = {c: v for c, v in self.fg_locations[index].items() if len(v)}
        if force_fg and locs:
            classes = sorted(locs)
            cls = classes[int(rng.integers(len(classes)))]
            voxel = locs[cls][int(rng.integers(len(locs[cls])))]
            return [max(int(l), int(v) - p // 2) for v, p, l in zip(voxel, self.sampling_patch_size, lb)], True
        return [int(rng.integers(l, u + 1)) for l, u in zip(lb, ub)], False

    def sample(self, rng: np.random.Generator, batch_size: int, part: slice | None = None) -> PatchBatch:
        """Draw one batch of ``batch_size`` patches of :attr:`sampling_patch_size`.

        ``part`` (a data-parallel rank's slice of the global batch) crops only those samples, but every random
        choice of the whole batch is drawn, so ``rng`` advances as in a single process and the slices of all
        ranks together are the single-process batch.
        """
        first = int(rng.integers(len(self.cases)))
        pool = self.by_channels[self.cases[first].image.shape[0]]
        indices = [first] + [pool[int(rng.integers(len(pool)))] for _ in range(batch_size - 1)]
        placed = [self._lower_corner(rng, i, self.force_foreground(j, batch_size)) for j, i in enumerate(indices)]
        if part is not None:
            indices, placed = indices[part], placed[part]
        size = self.sampling_patch_size
        images, labels = [], []
        for i, (lower, _) in zip(indices, placed):
            case = self.cases[i]
            images.append(crop_with_padding(case.image, lower, size, 0, dtype=np.float32))
            labels.append(crop_with_padding(case.label, lower, size, -1, dtype=np.int64))
        return PatchBatch(
            images=np.stack(images) if images else np.zeros((0, 1, *size), np.float32),
            labels=np.stack(labels) if labels else np.zeros((0, *size), np.int64),
            task_ids=[self.cases[i].task_id for i in indices],
            names=[self.cases[i].name for i in indices],
            forced_fg=[fg for _, fg in placed],
        )
