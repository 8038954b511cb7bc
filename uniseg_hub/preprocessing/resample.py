"""Resampling with nnU-Net v1's semantics (``resample_data_or_seg``), in torch: no scipy/skimage at run time.

* Images: ``skimage.transform.resize(order=3, mode='edge', anti_aliasing=False)`` = cubic B-spline
  (``scipy.ndimage.zoom(grid_mode=True, mode='nearest')`` after a 12-voxel edge pre-pad), output clipped to the
  input range; for anisotropic data the in-plane axes slice by slice and the low-resolution axis with order 0.
* Label maps (:func:`resample_labels`): batchgenerators' ``resize_segmentation(order=1)`` as nnU-Net v1 used it —
  each label's one-hot map resized linearly, ``result[map >= 0.5] = label`` in ascending label order (later labels
  overwrite, voxels no label reaches stay 0) — with the low-resolution axis of anisotropic data at order 0
  (``resample_data_or_seg(is_seg=True, order=1, order_z=0)``, as ``GenericPreprocessor`` calls it).

Exactness: the image path matches the official arrays to float precision; the label path reproduces
``scipy.ndimage.zoom(order=1)``'s floating-point arithmetic operation for operation (weights ``1 - t`` and
``1 - (1 - t)``, corner products in axis order, corners summed in C order), because a label map is decided by
``>= 0.5`` comparisons and exact ties (0.5) occur at every boundary of an even resize factor.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "resize_axis",
    "target_shape",
    "separate_z_axis",
    "resample_volume",
    "resample_labels",
]

#: nnU-Net v1 ``RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD``: beyond this max/min spacing ratio, z is resampled apart.
ANISOTROPY_THRESHOLD = 3.0
_SPLINE_PAD = 12  # scipy.ndimage pre-pads by 12 voxels (mode "nearest") before the spline prefilter
_POLE = math.sqrt(3.0) - 2.0  # pole of the cubic B-spline prefilter
_FIR_RADIUS = 24  # |pole|**24 < 2e-14: the IIR prefilter as a symmetric FIR filter, exact to float64 precision


def _spline_prefilter_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = torch.arange(-_FIR_RADIUS, _FIR_RADIUS + 1, dtype=torch.float64)
    h = math.sqrt(3.0) * _POLE ** k.abs()  # impulse response of 6 / (z + 4 + 1/z)
    return h.to(dtype=dtype, device=device).view(1, 1, -1)


def _source_coords(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Output voxel centres in input coordinates (``grid_mode=True``): ``(i + 0.5) * n_in / n_out - 0.5``."""
    scale = float(n_in) / float(n_out)
    return (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * scale - 0.5


def resize_axis(x: torch.Tensor, dim: int, size: int, order: int) -> torch.Tensor:
    """Resize one axis of ``x`` to ``size`` samples, like ``scipy.ndimage.zoom(..., grid_mode=True, mode='nearest')``.

    Args:
        x: any-shaped tensor (computed in its own dtype; use float64 for official parity of order 3).
        dim: the axis to resize.
        size: its new length.
        order: 0 (nearest, halves round up), 1 (linear) or 3 (cubic B-spline, edge-padded by 12 voxels and
            prefiltered like scipy). Coordinates outside the volume take the edge value.
    """
    n = x.shape[dim]
    if n == size:
        return x
    if order not in (0, 1, 3):
        raise ValueError(f"interpolation order must be 0, 1 or 3, got {order}")
    xt = x.movedim(dim, -1)
    lead = xt.shape[:-1]
    flat = xt.reshape(-1, n)
    src = _source_coords(n, size, x.device)
    if order == 0:
        idx = torch.floor(src + 0.5).clamp_(0, n - 1).long()
        out = flat.index_select(1, idx)
    elif order == 1:
        src = src.clamp(0, n - 1)
        i0 = torch.floor(src).long().clamp_(max=n - 1)
        t = (src - i0).to(x.dtype)
        i1 = (i0 + 1).clamp_(max=n - 1)
        out = flat.index_select(1, i0) * (1 - t) + flat.index_select(1, i1) * t
    else:
        padded = F.pad(flat[:, None], (_SPLINE_PAD, _SPLINE_PAD), mode="replicate")
        ext = F.pad(padded, (_FIR_RADIUS, _FIR_RADIUS), mode="reflect") if padded.shape[-1] > _FIR_RADIUS else None
        if ext is None:  # very short axis: reflect in several rounds
            ext = padded
            for _ in range(_FIR_RADIUS):
                ext = F.pad(ext, (1, 1), mode="reflect")
        coef = F.conv1d(ext, _spline_prefilter_kernel(x.dtype, x.device))[:, 0]  # (M, n + 2*pad)
        pos = src + _SPLINE_PAD
        base = torch.floor(pos)
        t = (pos - base).to(x.dtype)
        start = base.long() - 1
        w = torch.stack(
            [(1 - t) ** 3 / 6, (4 - 6 * t**2 + 3 * t**3) / 6, (1 + 3 * t + 3 * t**2 - 3 * t**3) / 6, t**3 / 6]
        )
        out = sum(coef.index_select(1, start + k) * w[k] for k in range(4))
    return out.reshape(*lead, size).movedim(-1, dim)


def target_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """nnU-Net's resampled shape: ``round(spacing / new_spacing * shape)`` (numpy rounding, half to even)."""
    ratio = np.array(spacing, dtype=float) / np.array(new_spacing, dtype=float)
    return [int(v) for v in np.round(ratio * np.array(shape))]


def separate_z_axis(spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """The axis nnU-Net v1 resamples on its own (anisotropic source, else anisotropic target), or ``None``."""
    for sp in (spacing, new_spacing):
        sp = np.asarray(sp, dtype=float)
        if sp.max() / sp.min() > ANISOTROPY_THRESHOLD:
            axes = np.where(sp.max() / sp == 1)[0]
            return int(axes[0]) if len(axes) == 1 else None
    return None


def resample_volume(
    data: torch.Tensor,
    new_shape: Sequence[int],
    order: int,
    separate_axis: int | None = None,
    order_z: int = 0,
    clip: bool = True,
) -> torch.Tensor:
    """Resample ``(C, Z, Y, X)`` like nnU-Net v1 ``resample_data_or_seg`` (skimage ``resize``, ``mode='edge'``).

    Without ``separate_axis`` every channel is resized in 3D with ``order``; with it, the other two axes are
    resized slice by slice with ``order`` and ``separate_axis`` with ``order_z``. ``clip`` clips each resize
    output to its input's range, per channel (3D) or per slice (separate axis), as skimage does. The result
    has ``data``'s dtype; work in float64 for official parity.
    """
    shape = list(data.shape[1:])
    new_shape = [int(s) for s in new_shape]
    if shape == new_shape:
        return data
    in_axes = [a for a in range(3) if a != separate_axis]
    out = data
    for a in in_axes:
        out = resize_axis(out, a + 1, new_shape[a], order)
    if clip and order > 1:
        keep = (0,) if separate_axis is None else (0, separate_axis + 1)
        red = tuple(d for d in range(4) if d not in keep)
        lo, hi = data.amin(dim=red, keepdim=True), data.amax(dim=red, keepdim=True)
        out = torch.maximum(torch.minimum(out, hi), lo)
    if separate_axis is not None:
        out = resize_axis(out, separate_axis + 1, new_shape[separate_axis], order_z)
    return out



def _linear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order-1 taps of ``scipy.ndimage.zoom(grid_mode=True, mode='nearest')`` along one axis.

    Returns ``(i0, i1, w0, w1)``: source indices (clamped to the edge) and weights, computed as scipy computes them
    (``get_spline_interpolation_weights``: ``w0 = 1 - t``, ``w1 = 1 - w0`` with ``t = c - floor(c)``).
    """
    c = _source_coords(n_in, n_out, device)
    start = torch.floor(c)
    w0 = 1.0 - (c - start)
    w1 = 1.0 - w0
    i0 = start.long()
    return i0.clamp(0, n_in - 1), (i0 + 1).clamp(0, n_in - 1), w0, w1


def _linear_resize_onehot(
    onehot: torch.Tensor, lo: Sequence[int], taps: dict[int, tuple], ranges: dict[int, tuple[int, int]]
) -> torch.Tensor:
    """The linear resize of a ``(Z, Y, X)`` one-hot map over output ranges ``ranges`` of the resized axes.

    ``onehot`` is the input cut at offsets ``lo``; axes not in ``taps`` keep their size (identity). The value is
    ``sum over corners (C order) of ((v * w_a) * w_b) * w_c`` — scipy's ``NI_ZoomShift`` summation, so ties at
    0.5 are decided exactly as skimage/scipy decide them.
    """
    axes = sorted(taps)
    out: torch.Tensor | None = None

    def corners(x: torch.Tensor, k: int) -> None:
        nonlocal out
        if k == len(axes):
            out = x if out is None else out + x
            return
        a = axes[k]
        i0, i1, w0, w1 = taps[a]
        s, e = ranges[a]
        shape = [1, 1, 1]
        shape[a] = e - s
        for idx, w in ((i0, w0), (i1, w1)):
            corners(x.index_select(a, idx[s:e] - lo[a]) * w[s:e].view(shape), k + 1)

    corners(onehot, 0)
    assert out is not None
    return out


def resample_labels(
    labels: torch.Tensor | np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None
) -> torch.Tensor:
    """Resample a ``(Z, Y, X)`` label map like nnU-Net v1 (``resize_segmentation`` with order 1).

    Every label value, in ascending order, gets its one-hot map resized linearly (``mode='edge'``); where that map
    is ``>= 0.5`` the output takes the label, so later (larger) labels overwrite earlier ones and a voxel that no
    map brings to 0.5 (where three or more labels meet) stays 0. With ``separate_axis`` the two other axes are
    resized that way (slice by slice, as nnU-Net does) and ``separate_axis`` by nearest neighbour (order 0).
    One label at a time is resized, restricted to the output box its voxels can reach: memory stays at a few
    output-sized arrays whatever the number of labels.

    Args:
        labels: ``(Z, Y, X)`` integer label values (numpy or torch; torch tensors are resampled on their device).
        new_shape: output ``(Z', Y', X')``.
        separate_axis: the low-resolution axis of anisotropic data (:func:`separate_z_axis`), or ``None``.

    Returns:
        ``(Z', Y', X')`` int16 tensor (on ``labels``' device).

    Example:
        >>> resample_labels(torch.tensor([[[0, 0, 2, 2]]]), [1, 1, 8]).tolist()
        [[[0, 0, 0, 0, 2, 2, 2, 2]]]
    """
    lab = torch.as_tensor(labels)
    if lab.ndim != 3:
        raise ValueError(f"resample_labels expects a (Z, Y, X) label map, got shape {tuple(lab.shape)}")
    if lab.dtype.is_floating_point or lab.dtype.is_complex or lab.dtype == torch.bool:
        raise ValueError(f"resample_labels expects integer label values, got dtype {lab.dtype}")
    new_shape = [int(s) for s in new_shape]
    if len(new_shape) != 3 or min(new_shape) < 1:
        raise ValueError(f"new_shape must be three positive sizes (Z, Y, X), got {new_shape}")
    lab = lab.to(torch.int16)
    if list(lab.shape) == new_shape:
        return lab.clone()
    axes = [a for a in range(3) if a != separate_axis and lab.shape[a] != new_shape[a]]
    taps = {a: _linear_taps(lab.shape[a], new_shape[a], lab.device) for a in axes}
    mid_shape = [new_shape[a] if a != separate_axis else lab.shape[a] for a in range(3)]
    values = torch.unique(lab)
    if len(values) == 1:  # one label: its map is 1 everywhere
        out = torch.full(mid_shape, int(values[0]), dtype=torch.int16, device=lab.device)
    else:
        out = torch.zeros(mid_shape, dtype=torch.int16, device=lab.device)
        for v in values.tolist():
            hit = lab == v
            lo, ranges, cut = [0, 0, 0], {}, []
            for a in range(3):
                present = torch.nonzero(hit.any(dim=tuple(d for d in range(3) if d != a))).flatten()
                first, last = int(present[0]), int(present[-1])
                if a in taps:  # output voxels with a tap inside [first, last], and the input rows they read
                    i0, i1, _, _ = taps[a]
                    sel = torch.nonzero((i1 >= first) & (i0 <= last)).flatten()
                    s, e = int(sel[0]), int(sel[-1]) + 1
                    ranges[a] = (s, e)
                    lo[a] = int(i0[s])
                    cut.append(slice(lo[a], int(i1[e - 1]) + 1))
                    continue
                ranges[a] = (first, last + 1)
                lo[a] = first
                cut.append(slice(first, last + 1))
            onehot = hit[tuple(cut)].to(torch.float64)
            score = _linear_resize_onehot(onehot, lo, taps, ranges) if taps else onehot
            box = tuple(slice(*ranges[a]) for a in range(3))
            out[box][score >= 0.5] = v
    if separate_axis is not None and lab.shape[separate_axis] != new_shape[separate_axis]:
        out = resize_axis(out, separate_axis, new_shape[separate_axis], 0)
    return out
