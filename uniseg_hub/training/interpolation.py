"""Cubic B-spline and per-label interpolation of 3D volumes in torch, with ``scipy.ndimage.map_coordinates``
semantics (``mode='constant'``: cval outside ``[0, n - 1]``, mirror-extended spline coefficients inside): what
batchgenerators' ``SpatialTransform`` does to images (order 3) and label maps (order 1, per label), used by
:func:`uniseg_hub.training.augment.spatial_transform`. Checked against scipy in ``tests/test_sampling_augment.py``."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["spline_coefficients", "interpolate_data", "interpolate_labels", "reflect_index", "cubic_weights", "CHUNK_VOXELS", "prefilter_axis"]

_POLE = math.sqrt(3.0) - 2.0  # the pole of the cubic B-spline prefilter
CHUNK_VOXELS = 1 << 17  # output voxels interpolated at a time (keeps the temporaries in cache)

# ---------------------------------------------------------------------------------------------------------------
# Cubic B-splines (scipy.ndimage semantics)
# ---------------------------------------------------------------------------------------------------------------
def _fold(j: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the mirror-extended axis (``... c b | a b c d | c b ...``, scipy ``mode='mirror'``)."""
    if n == 1:
        return torch.zeros_like(j)
    period = 2 * (n - 1)
    j = torch.remainder(j, period)
    return torch.where(j > n - 1, period - j, j)


def reflect_index(j: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the symmetrically extended axis (``... b a | a b c d | d c ...``, scipy ``mode='reflect'``)."""
    j = torch.remainder(j, 2 * n)
    return torch.where(j > n - 1, 2 * n - 1 - j, j)


def prefilter_axis(x: torch.Tensor, dim: int, boundary: str) -> torch.Tensor:
    """Cubic B-spline coefficients along ``dim`` (scipy ``spline_filter1d``, exact boundary initialisation)."""
    n = x.shape[dim]
    c = x.movedim(dim, 0).clone(memory_format=torch.contiguous_format)
    if n == 1:
        return c.movedim(0, dim)
    z = _POLE
    c.mul_((1 - z) * (1 - 1 / z))  # gain 6
    k = np.arange(n, dtype=np.float64)
    if boundary == "mirror":  # scipy _init_causal_mirror
        w = z**k + z ** (2 * n - 2 - k)
        w[0], w[-1] = 1.0, z ** (n - 1)
        w /= 1 - z ** (2 * n - 2)
        c0 = torch.tensordot(torch.from_numpy(w).to(c.dtype), c, dims=([0], [0]))
    else:  # "reflect": scipy _init_causal_reflect
        w = (z**k + z ** (2 * n - 1 - k)) * (z / (1 - z ** (2 * n)))
        c0 = c[0] + torch.tensordot(torch.from_numpy(w).to(c.dtype), c, dims=([0], [0]))
    c[0] = c0
    for i in range(1, n):  # causal pass
        c[i].add_(c[i - 1], alpha=z)
    if boundary == "mirror":
        c[n - 1] = (z * c[n - 2] + c[n - 1]) * (z / (z * z - 1))
    else:
        c[n - 1] *= z / (z - 1)
    for i in range(n - 2, -1, -1):  # anti-causal pass: c[i] = z * (c[i + 1] - c[i])
        c[i].mul_(-z).add_(c[i + 1], alpha=z)
    return c.movedim(0, dim)


def spline_coefficients(x: torch.Tensor, dims: Sequence[int] = (-3, -2, -1), boundary: str = "mirror") -> torch.Tensor:
    """Cubic B-spline coefficients of ``x`` over ``dims`` (scipy ``spline_filter(order=3, mode=boundary)``).

    Computed in ``x``'s dtype. ``boundary``: ``"mirror"`` (what ``map_coordinates(mode='constant')`` uses) or
    ``"reflect"`` (``mode='nearest'`` / ``'reflect'``).
    """
    if boundary not in ("mirror", "reflect"):
        raise ValueError(f"boundary must be 'mirror' or 'reflect', got {boundary!r}")
    for d in dims:
        x = prefilter_axis(x, d % x.ndim, boundary)
    return x.contiguous()


def cubic_weights(t: torch.Tensor) -> torch.Tensor:
    t2 = t * t
    t3 = t2 * t
    u = 1 - t
    return torch.stack([u * u * u / 6, (4 - 6 * t2 + 3 * t3) / 6, (1 + 3 * t + 3 * t2 - 3 * t3) / 6, t3 / 6], -1)


def _taps(x: torch.Tensor, n: int, order: int, dtype: torch.dtype = torch.float64,
          itype: torch.dtype = torch.int32) -> tuple[torch.Tensor, torch.Tensor]:
    """Input indices ``(N, order + 1)`` (mirror-folded, ``itype``) and weights (``dtype``) of spline
    interpolation at the float64 coordinates ``x``. Indices of points outside ``[0, n - 1]`` are valid but
    meaningless (callers mask those points)."""
    if order == 0:
        i = torch.floor(x + 0.5).clamp_(0, n - 1).to(itype)[:, None]
        return i, torch.ones(x.shape[0], 1, dtype=dtype)
    f = torch.floor(x)
    t = (x - f).to(dtype)
    base = f.clamp_(-2, n + 1).to(itype)[:, None]
    if order == 1:
        j, w = base + torch.arange(2, dtype=itype), torch.stack([1 - t, t], -1)
    else:
        j, w = base + torch.arange(-1, 3, dtype=itype), cubic_weights(t)
    if n < 3:  # taps can lie more than one mirror image away
        return _fold(j, n), w
    j = torch.where(j < 0, -j, j)
    return torch.where(j > n - 1, 2 * (n - 1) - j, j).clamp_(0, n - 1), w


def _inside(coords: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """``map_coordinates(mode='constant')``: a point is interpolated iff ``0 <= x <= n - 1`` on every axis."""
    ok = torch.ones_like(coords[0], dtype=torch.bool)
    for x, n in zip(coords, shape):
        ok &= (x >= 0) & (x <= n - 1)
    return ok


def interpolate_data(flat: torch.Tensor, shape: Sequence[int], coords: Sequence[torch.Tensor], order: int,
                      cval: float = 0.0) -> torch.Tensor:
    """Spline interpolation of ``flat`` ``(C, prod(shape))`` (coefficients for order 3) at ``coords`` → ``(C, N)``."""
    itype = torch.int32 if flat.shape[1] < 2**31 else torch.long
    strides = (shape[1] * shape[2], shape[2], 1)
    idx, wts = [], []
    for x, n, s in zip(coords, shape, strides):
        i, w = _taps(x, n, order, flat.dtype, itype)
        idx.append(i * s)
        wts.append(w)
    out = torch.zeros(flat.shape[0], coords[0].shape[0], dtype=flat.dtype)
    k = order + 1
    for a in range(k):
        for b in range(k):
            iab = idx[0][:, a] + idx[1][:, b]
            inner = flat.index_select(1, iab + idx[2][:, 0]) * wts[2][:, 0]
            for c in range(1, k):
                inner.addcmul_(flat.index_select(1, iab + idx[2][:, c]), wts[2][:, c])
            out.addcmul_(inner, wts[0][:, a] * wts[1][:, b])
    out[:, ~_inside(coords, shape)] = cval
    return out


def interpolate_labels(flat: torch.Tensor, shape: Sequence[int], coords: Sequence[torch.Tensor], order: int,
                        cval: int) -> torch.Tensor:
    """batchgenerators ``interpolate_img(is_seg=True)`` of the label map ``flat`` ``(prod(shape),)`` → ``(N,)``.

    Order 1: each label's indicator is interpolated linearly and the label with the highest score wins; an exact
    tie goes to the nearest-neighbour label when it is among the tied ones, else to the smallest tied label
    (batchgenerators' ``seg_tiebreak='nearest'``). Only labels at the 8 surrounding voxels can score, so the scores
    are formed per corner. Points outside the sample get ``cval``.
    """
    strides = (shape[1] * shape[2], shape[2], 1)
    inside = _inside(coords, shape)
    itype = torch.int32 if flat.shape[0] < 2**31 else torch.long
    if order == 0:
        lin = sum(_taps(x, n, 0, itype=itype)[0][:, 0] * s for x, n, s in zip(coords, shape, strides))
        out = flat.index_select(0, lin).long()
        out[~inside] = cval
        return out
    taps = [_taps(x, n, 1, torch.float64, itype) for x, n in zip(coords, shape)]
    lin = (taps[0][0][:, :, None, None] * strides[0] + taps[1][0][:, None, :, None] * strides[1]
           + taps[2][0][:, None, None, :]).reshape(-1)
    corner = flat.index_select(0, lin).view(-1, 8)  # labels at the corners, corner index = 4 a + 2 b + c
    out = corner[:, 0].long()
    mixed = torch.nonzero(~(corner == corner[:, :1]).all(1) & inside)[:, 0]
    if len(mixed):
        lab = corner[mixed]
        w = (taps[0][1][mixed, :, None, None] * taps[1][1][mixed, None, :, None] * taps[2][1][mixed, None, None, :])
        w = w.reshape(-1, 8)
        score = ((lab[:, :, None] == lab[:, None, :]) * w[:, None, :]).sum(-1)  # score of each corner's label
        top = score == score.max(1, keepdim=True).values
        lowest = torch.where(top, lab, torch.iinfo(lab.dtype).max).min(1).values
        bits = [(torch.floor(x[mixed] + 0.5) > torch.floor(x[mixed])).long() for x in coords]
        nearest = (4 * bits[0] + 2 * bits[1] + bits[2])[:, None]
        out[mixed] = torch.where(top.gather(1, nearest)[:, 0], lab.gather(1, nearest)[:, 0], lowest).long()
    out[~inside] = cval
    return out
