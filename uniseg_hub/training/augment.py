"""nnU-Net v1's ``moreDA`` augmentation (``get_moreDA_augmentation``) for 3D patches, in torch.

The official UniSeg downstream recipe augments every sample with these batchgenerators transforms, in this order
(parameters: :class:`~uniseg_hub.training.config.AugmentationConfig`):

1. ``SpatialTransform``: rotation (p 0.2, ±30° about each axis) and isotropic scaling (p 0.2, 0.7-1.4) of a
   zero-centred grid of the training patch placed at the centre of the oversized sample
   (:func:`~uniseg_hub.training.sampling.sampling_patch_size`); images are interpolated with cubic B-splines,
   label maps linearly per label (:func:`spatial_transform`). When neither fires: a plain centre crop.
2. Gaussian noise (p 0.1), Gaussian blur (p 0.2; each channel with p 0.5), multiplicative brightness (p 0.15),
   contrast (p 0.15), simulated low resolution (p 0.25; each channel with p 0.5), gamma of the inverted image
   (p 0.1), gamma (p 0.3), mirroring (each axis with p 0.5).
3. ``MaskTransform`` (channels normalised inside the nonzero mask are set to 0 where the label is -1) and
   ``RemoveLabelTransform(-1 -> 0)``.

Every random number comes from the :class:`numpy.random.Generator` the caller passes: :meth:`NnUNetAugmentation.draw`
turns it into an :class:`AugmentationParams` (what fired, with which values) and :meth:`NnUNetAugmentation.apply` is
deterministic, so results are a pure function of the generator's state. The distributions are batchgenerators'
(not its exact draw sequence: it draws from numpy's global generator).

Numerics follow batchgenerators / scipy / skimage, checked against them in ``tests/test_sampling_augment.py``:
``map_coordinates(mode='constant')`` semantics (cval outside ``[0, n - 1]``, mirror-extended spline coefficients
inside), ``gaussian_filter(mode='reflect', truncate=4)``, ``skimage.transform.resize(mode='edge')`` for the low
resolution. Gamma, contrast and brightness are MONAI's deterministic transforms, which compute the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai.transforms import AdjustContrast, ScaleIntensity, ScaleIntensityFixedMean

from .config import AugmentationConfig
from .interpolation import CHUNK_VOXELS, cubic_weights, interpolate_data, interpolate_labels, prefilter_axis, reflect_index, spline_coefficients

__all__ = [
    "AugmentationParams",
    "NnUNetAugmentation",
    "build_augmentation",
    "augment_batch",
    "rotation_matrix",
    "spatial_transform",
    "center_crop",
    "spline_coefficients",
    "gaussian_blur",
    "simulate_low_resolution",
]

# ---------------------------------------------------------------------------------------------------------------
# Spatial transform
# ---------------------------------------------------------------------------------------------------------------
def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """batchgenerators' ``rotate_coords_3d`` matrix ``Rx(a_x) @ Ry(a_y) @ Rz(a_z)`` (coordinates rotate as
    ``coords @ R``; ``a_x`` turns axes 1 and 2, ``a_y`` axes 0 and 2, ``a_z`` axes 0 and 1)."""
    ax, ay, az = (float(a) for a in angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.dot(np.dot(np.dot(np.identity(3), rx), ry), rz)


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` box of the last three axes (batchgenerators ``center_crop_aug``: lower corner
    ``(shape - size) // 2``)."""
    shape = x.shape[-3:]
    if any(s < p for s, p in zip(shape, size)):
        raise ValueError(f"cannot centre-crop {tuple(shape)} to {tuple(size)}")
    lo = [(s - p) // 2 for s, p in zip(shape, size)]
    return x[..., lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]]


def spatial_transform(image: torch.Tensor, label: torch.Tensor | None, patch_size: Sequence[int],
                      rotation: Sequence[float] | None = None, scale: float | Sequence[float] | None = None, *,
                      order_data: int = 3, order_seg: int = 1, border_cval_seg: int = -1,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """batchgenerators ``augment_spatial`` for one sample, without elastic deformation and random crop.

    The output grid is ``create_zero_centered_coordinate_mesh(patch_size)``, rotated (``coords @ R``,
    :func:`rotation_matrix`), scaled and moved to the sample's centre ``shape / 2 - 0.5``; the image is sampled
    with ``map_coordinates(order_data, mode='constant', cval=0)``, the label map with ``interpolate_img(is_seg=True,
    order_seg, cval=border_cval_seg)``. Without rotation and scale: a centre crop.

    Args:
        image: ``(C, *S)`` float.
        label: ``(*S)`` integer label map, or ``None``.
        patch_size: output ``(D, H, W)``.
        rotation: angles ``(a_x, a_y, a_z)`` in radians, or ``None``.
        scale: one factor or one per axis (> 1 samples a larger region: zooms out), or ``None``.
        dtype: precision of the interpolation (spline coefficients and weights; coordinates are float64).
            float32 is within a few float32 ulps of scipy (float64 throughout); float64 equals scipy after the
            cast to float32.

    Returns:
        ``(C, *patch_size)`` float32 and ``(*patch_size)`` int64 (or ``None``).
    """
    patch = [int(p) for p in patch_size]
    if rotation is None and scale is None:
        x = center_crop(image, patch).to(torch.float32, copy=True)
        return x, None if label is None else center_crop(label, patch).to(torch.int64, copy=True)
    shape = list(image.shape[1:])
    rot = rotation_matrix(rotation) if rotation is not None else np.identity(3)
    if scale is None or isinstance(scale, (int, float)):
        sc = [1.0 if scale is None else float(scale)] * 3
    else:
        sc = [float(s) for s in scale]
    data = image.to(dtype)
    if order_data == 3:
        data = spline_coefficients(data, (1, 2, 3))
    flat = data.reshape(image.shape[0], -1)
    lab = None
    if label is not None:
        small = int(label.min()) >= -(2**15) and int(label.max()) < 2**15
        lab = label.reshape(-1).to(torch.int16 if small else torch.int32)
    mesh = [torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0 for p in patch]
    centre = [s / 2.0 - 0.5 for s in shape]
    rows = max(1, CHUNK_VOXELS // (patch[1] * patch[2]))
    out_x, out_y = [], []
    for r0 in range(0, patch[0], rows):
        m0 = mesh[0][r0:r0 + rows]
        coords = [((m0[:, None, None] * rot[0, d] + mesh[1][None, :, None] * rot[1, d]
                    + mesh[2][None, None, :] * rot[2, d]) * sc[d] + centre[d]).reshape(-1) for d in range(3)]
        out_x.append(interpolate_data(flat, shape, coords, order_data))
        if lab is not None:
            out_y.append(interpolate_labels(lab, shape, coords, order_seg, border_cval_seg))
    x = torch.cat(out_x, 1).reshape(image.shape[0], *patch).to(torch.float32)
    y = None if lab is None else torch.cat(out_y).reshape(*patch)
    return x, y


# ---------------------------------------------------------------------------------------------------------------
# Intensity transforms
# ---------------------------------------------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy ``gaussian_filter(x, sigma, mode='reflect', truncate=4)`` over every axis of ``x`` (one channel).

    Each axis is filtered in float64 and rounded to ``x``'s dtype, as scipy does for a float32 array.
    """
    radius = int(truncate * float(sigma) + 0.5)
    k = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * k**2)
    phi = phi / phi.sum()
    y = x
    for d in range(x.ndim):
        n = y.shape[d]
        base = torch.arange(n)
        src = y.double()
        acc = src * phi[radius]
        for j in range(1, radius + 1):
            pair = src.index_select(d, reflect_index(base - j, n)) + src.index_select(d, reflect_index(base + j, n))
            acc += pair * phi[radius + j]
        y = acc.to(x.dtype)
    return y


def _zoom_axis(x: torch.Tensor, dim: int, size: int, order: int) -> torch.Tensor:
    """One axis of scipy ``zoom(grid_mode=True, mode='nearest')`` (order 0 or 3; x float64)."""
    n = x.shape[dim]
    if n == size:
        return x
    src = (torch.arange(size, dtype=torch.float64) + 0.5) * (float(n) / float(size)) - 0.5
    if order == 0:
        return x.index_select(dim, torch.floor(src + 0.5).long().clamp_(0, n - 1))
    pad = 12  # scipy's _prepad_for_spline_filter for mode 'nearest'
    padded = x.index_select(dim, (torch.arange(n + 2 * pad) - pad).clamp_(0, n - 1))
    coef = prefilter_axis(padded, dim, "reflect")
    pos = src + pad
    f = torch.floor(pos)
    w = cubic_weights(pos - f)
    start = f.long() - 1
    view = [1] * x.ndim
    view[dim] = size
    return sum(coef.index_select(dim, start + j) * w[:, j].view(view) for j in range(4))


def simulate_low_resolution(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """batchgenerators ``augment_linear_downsampling_scipy`` for one channel as moreDA configures it: skimage
    ``resize`` to ``round(shape * zoom)`` with order 0, back with order 3 (``mode='edge'``, clipped to the range
    of the downsampled image), in float64."""
    shape = list(x.shape)
    target = [max(1, int(t)) for t in np.round(np.array(shape) * zoom).astype(int)]
    y = x.double()
    for d in range(x.ndim):
        y = _zoom_axis(y, d, target[d], 0)
    lo, hi = y.min(), y.max()
    for d in range(x.ndim):
        y = _zoom_axis(y, d, shape[d], 3)
    return torch.clamp(y, lo, hi).to(x.dtype)


def _plain(t) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class AugmentationParams:
    """Everything drawn for one sample; ``None`` (or an empty tuple) where a transform did not fire.

    Attributes:
        rotation: ``(a_x, a_y, a_z)`` radians. scale: one factor or one per axis.
        noise_std, noise_seed: Gaussian noise sd (same for all channels) and the seed of its noise field.
        blur_sigma, lowres_zoom: per channel, ``None`` for channels left alone.
        brightness, contrast, gamma_inverted, gamma: per channel factors / gammas.
        mirror: the spatial axes flipped.
    """

    rotation: tuple[float, float, float] | None = None
    scale: float | tuple[float, ...] | None = None
    noise_std: float | None = None
    noise_seed: int | None = None
    blur_sigma: list[float | None] | None = None
    brightness: list[float] | None = None
    contrast: list[float] | None = None
    lowres_zoom: list[float | None] | None = None
    gamma_inverted: list[float] | None = None
    gamma: list[float] | None = None
    mirror: tuple[int, ...] = ()


def _low_high(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    """batchgenerators' two-sided draw: half the time uniform in ``[lo, 1)``, else in ``[max(lo, 1), hi]``."""
    lo, hi = lo_hi
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1))
    return float(rng.uniform(max(lo, 1), hi))


class NnUNetAugmentation:
    """nnU-Net v1's ``moreDA`` training augmentation for one sample at a time (see the module docstring).

    Args:
        aug: the recipe.
        patch_size: the training patch ``(D, H, W)``; samples come in at the sampling size (larger or equal).
        mask_channels: channels whose normalisation used the nonzero mask (nnU-Net's
            ``use_mask_for_norm``): set to 0 where the label is -1.
        dtype: precision of the spatial interpolation (see :func:`spatial_transform`).

    Example::

        pipe = NnUNetAugmentation(AugmentationConfig(), [32, 64, 64])
        params = pipe.draw(np.random.default_rng(0), num_channels=1)
        x, y = pipe.apply(image, label, params)  # (1, 85, 124, 102) -> (1, 32, 64, 64)
    """

    def __init__(self, aug: AugmentationConfig, patch_size: Sequence[int], mask_channels: Sequence[int] = (),
                 dtype: torch.dtype = torch.float32) -> None:
        self.aug = aug
        self.patch_size = [int(p) for p in patch_size]
        self.mask_channels = tuple(int(c) for c in mask_channels)
        self.dtype = dtype

    def draw(self, rng: np.random.Generator, num_channels: int) -> AugmentationParams:
        """Draw the random parameters of one sample of ``num_channels`` channels (batchgenerators' distributions)."""
        a, p = self.aug, AugmentationParams()
        if a.p_rot > 0 and a.rotation_deg > 0 and rng.random() < a.p_rot:
            r = math.radians(a.rotation_deg)
            p.rotation = tuple(float(rng.uniform(-r, r)) if rng.random() <= a.rotation_p_per_axis else 0.0
                               for _ in range(3))
        if a.p_scale > 0 and tuple(a.scale_range) != (1.0, 1.0) and rng.random() < a.p_scale:
            p.scale = (tuple(_low_high(rng, a.scale_range) for _ in range(3)) if a.independent_scale_per_axis
                       else _low_high(rng, a.scale_range))
        if rng.random() < a.p_noise:
            p.noise_std = float(rng.uniform(0.0, a.noise_std))
            p.noise_seed = int(rng.integers(2**63))
        if rng.random() < a.p_blur:
            p.blur_sigma = [float(rng.uniform(*a.blur_sigma)) if rng.random() <= a.blur_p_per_channel else None
                            for _ in range(num_channels)]
        if rng.random() < a.p_brightness:
            p.brightness = [float(rng.uniform(*a.brightness_range)) for _ in range(num_channels)]
        if rng.random() < a.p_contrast:
            p.contrast = [_low_high(rng, a.contrast_range) for _ in range(num_channels)]
        if rng.random() < a.p_lowres:
            p.lowres_zoom = [float(rng.uniform(*a.lowres_zoom)) if rng.random() < a.lowres_p_per_channel else None
                             for _ in range(num_channels)]
        if rng.random() < a.p_gamma_inverted:
            p.gamma_inverted = [_low_high(rng, a.gamma_range) for _ in range(num_channels)]
        if rng.random() < a.p_gamma:
            p.gamma = [_low_high(rng, a.gamma_range) for _ in range(num_channels)]
        p.mirror = tuple(ax for ax in a.mirror_axes if rng.random() < a.p_mirror)
        return p

    def apply(self, image: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray,
              params: AugmentationParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample (deterministic): ``image`` ``(C, *S)``, ``label`` ``(*S)`` with -1 outside the case
        → ``(C, *patch_size)`` float32 and ``(*patch_size)`` int64 (-1 mapped to 0). The inputs are not modified."""
        image, label = torch.as_tensor(image), torch.as_tensor(label)
        a, p = self.aug, params
        x, y = spatial_transform(image, label, self.patch_size, p.rotation, p.scale, order_data=a.order_data,
                                 order_seg=a.order_seg, border_cval_seg=-1, dtype=self.dtype)
        if p.noise_std is not None:
            noise = np.random.Generator(np.random.PCG64(p.noise_seed)).standard_normal(x.shape, dtype=np.float32)
            x = x + torch.from_numpy(noise) * p.noise_std
        if p.blur_sigma is not None:
            x = torch.stack([gaussian_blur(xc, s) if s is not None else xc for xc, s in zip(x, p.blur_sigma)])
        if p.brightness is not None:
            x = torch.cat([_plain(ScaleIntensity(minv=None, maxv=None, factor=m - 1.0)(x[c:c + 1]))
                           for c, m in enumerate(p.brightness)])
        if p.contrast is not None:
            x = torch.cat([_plain(ScaleIntensityFixedMean(factor=f - 1.0, preserve_range=True,
                                                          fixed_mean=True)(x[c:c + 1]))
                           for c, f in enumerate(p.contrast)])
        if p.lowres_zoom is not None:
            x = torch.stack([simulate_low_resolution(xc, z) if z is not None else xc
                             for xc, z in zip(x, p.lowres_zoom)])
        for gammas, invert in ((p.gamma_inverted, True), (p.gamma, False)):
            if gammas is not None:
                x = torch.cat([_plain(AdjustContrast(g, invert_image=invert,
                                                     retain_stats=a.gamma_retain_stats)(x[c:c + 1]))
                               for c, g in enumerate(gammas)])
        if p.mirror:
            x = torch.flip(x, [ax + 1 for ax in p.mirror])
            y = torch.flip(y, list(p.mirror))
        x = x.to(torch.float32).contiguous()
        outside = y < 0
        for c in self.mask_channels:
            x[c][outside] = 0.0
        y = torch.where(y == -1, torch.zeros_like(y), y)
        return x, y

    def __call__(self, image, label, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``apply(image, label, draw(rng, C))``."""
        return self.apply(image, label, self.draw(rng, int(image.shape[0])))


def build_augmentation(aug: AugmentationConfig, patch_size: Sequence[int],
                       mask_channels: Sequence[int] = ()) -> NnUNetAugmentation:
    """The moreDA pipeline of ``aug`` for training patches of ``patch_size`` (see :class:`NnUNetAugmentation`)."""
    return NnUNetAugmentation(aug, patch_size, mask_channels)


def augment_batch(pipeline: NnUNetAugmentation | None, images, labels, rng: np.random.Generator, *,
                  patch_size: Sequence[int], global_batch: int | None = None,
                  part: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch sample by sample: ``images`` ``(B, C, *S)``, ``labels`` ``(B, *S)`` (-1 outside the cases)
    → ``(B, C, *patch_size)`` float32 and ``(B, *patch_size)`` int64.

    Parameters are drawn from ``rng`` for every sample of the global batch of ``global_batch`` (default ``B``)
    samples, in order, whether this process uses them or not, and ``part`` selects this process's samples, so
    ``rng`` advances as in a single process. ``pipeline=None``: centre crop to ``patch_size`` and -1 → 0 only
    (nothing is drawn).
    """
    x, y = torch.as_tensor(images), torch.as_tensor(labels)
    patch = [int(s) for s in patch_size]
    if pipeline is None:
        xc = center_crop(x, patch).to(torch.float32, copy=True)
        yc = center_crop(y, patch).to(torch.int64, copy=True)
        return xc, torch.where(yc == -1, torch.zeros_like(yc), yc)
    if pipeline.patch_size != patch:
        raise ValueError(f"pipeline patch size {pipeline.patch_size} differs from patch_size {patch}")
    params = [pipeline.draw(rng, int(x.shape[1])) for _ in range(global_batch or len(x))]
    if part is not None:
        params = params[part]
    if len(params) != len(x):
        raise ValueError(f"part {part} of a global batch of {global_batch} holds {len(params)} samples, got {len(x)}")
    out = [pipeline.apply(xi, yi, pi) for xi, yi, pi in zip(x, y, params)]
    if not out:
        return torch.zeros((0, x.shape[1], *patch)), torch.zeros((0, *patch), dtype=torch.int64)
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
