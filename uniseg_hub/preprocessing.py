"""Scan IO and the nnU-Net v1 / UniSeg preprocessing contract: load → crop → resample → normalise, and back.

What the official ``nnUNet_predict`` (UniSeg's ``DoDNetPreprocessor`` on nnU-Net v1) does to a test case, and what
this module reproduces:

1. read every channel file (SimpleITK there, nibabel/pydicom here) into one ``(C, Z, Y, X)`` float32 array;
2. crop to the bounding box of the voxels that are nonzero in any channel (``crop_to_nonzero``);
3. resample to the target spacing with ``skimage.transform.resize`` semantics: cubic B-spline (order 3, edge
   extension, output clipped to the input range), except that for anisotropic scans (max/min spacing > 3) the
   in-plane axes are resized slice by slice (order 3, clipped per slice) and the low-resolution axis with order 0
   (``order_z_data=0`` in ``DoDNetPreprocessor``);
4. normalise each channel by its modality: CT clip ``[-325, 325]`` → ``[0, 1]``, MR/PET z-score over the volume.

After prediction the probabilities go back the same way (:func:`restore_labels`): order-1 resize to the cropped
size (order 0 along the low-resolution axis), argmax, placed into the crop box, written with the input's affine.

The resampling is written in torch (no scipy/skimage dependency) and matches the official arrays to float
precision (see ``tests/test_preprocessing.py``). Axis order is nnU-Net's ``(z, y, x)`` = reversed NIfTI voxel order.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from .config import PreprocessingConfig

__all__ = [
    "LoadedImage",
    "Preprocessed",
    "load_image",
    "crop_to_nonzero",
    "resize_axis",
    "resample_volume",
    "target_shape",
    "separate_z_axis",
    "normalize",
    "preprocess",
    "restore_labels",
    "labels_to_nifti",
]

logger = logging.getLogger(__name__)

#: nnU-Net v1 ``RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD``: beyond this max/min spacing ratio, z is resampled apart.
ANISOTROPY_THRESHOLD = 3.0
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SPLINE_PAD = 12  # scipy.ndimage pre-pads by 12 voxels (mode "nearest") before the spline prefilter
_POLE = math.sqrt(3.0) - 2.0  # pole of the cubic B-spline prefilter
_FIR_RADIUS = 24  # |pole|**24 < 2e-14: the IIR prefilter as a symmetric FIR filter, exact to float64 precision


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LoadedImage:
    """A scan as the network sees it before preprocessing.

    Attributes:
        array: ``(C, Z, Y, X)`` float32, one channel per input file (nnU-Net order = reversed NIfTI voxel order).
        spacing: voxel size in mm, ``(z, y, x)``.
        affine: 4x4 voxel → RAS+ world matrix of the first file, in its own voxel order ``(x, y, z)``.
        header: the first file's NIfTI header (``None`` for DICOM), reused when writing the result.
        paths: the files/folders read.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    header: Any = None
    paths: list[str] = field(default_factory=list)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Spatial shape in the file's voxel order."""
        return tuple(reversed(self.array.shape[1:]))  # type: ignore[return-value]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _load_one(path: Path) -> tuple[np.ndarray, np.ndarray, Any, tuple[float, float, float]]:
    """One channel: ``(xyz float32 array, affine, header, spacing xyz)``."""
    if not path.exists():
        raise FileNotFoundError(f"input image not found: {str(path)!r}")
    if path.is_dir():
        return _load_dicom_series(path)
    if not _is_nifti(path):
        raise ValueError(
            f"{str(path)!r} is not a NIfTI file or a DICOM series folder: expected a .nii/.nii.gz file or a folder "
            f"of DICOM slices, found a file with suffix {''.join(path.suffixes) or '(none)'!r}"
        )
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # nibabel raises many types for corrupt files
        raise ValueError(f"could not read {str(path)!r} as NIfTI: {e}") from e
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    return data, np.asarray(img.affine, dtype=np.float64), img.header, spacing  # type: ignore[return-value]


def _load_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray, Any, tuple[float, float, float]]:
    """A folder holding one DICOM series, read with MONAI's ``PydicomReader`` (slices sorted by position, LPS→RAS)."""
    from monai.data import PydicomReader

    files = [f for f in sorted(folder.iterdir()) if f.is_file()]
    if not files:
        raise ValueError(f"{str(folder)!r} is an empty folder: expected a folder of DICOM slices of one series")
    try:
        reader = PydicomReader(fname_regex=None)  # None: keep only files pydicom recognises as DICOM
        data, meta = reader.get_data(reader.read(str(folder)))
    except Exception as e:
        raise ValueError(f"{str(folder)!r} is not a readable DICOM series folder: {e}") from e
    affine = np.asarray(meta["affine"], dtype=np.float64)
    spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
    return np.asarray(data, dtype=np.float32), affine, None, spacing  # type: ignore[return-value]


def load_image(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> LoadedImage:
    """Read one scan from one file per channel (NIfTI files or DICOM series folders).

    Raises a single clear error for a missing file, a file that is neither NIfTI nor DICOM, a non-3D image,
    channels of different shapes, and NaN/inf voxels.

    Returns:
        :class:`LoadedImage` with ``array`` of shape ``(C, Z, Y, X)``, ``C = len(paths)``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no input image given: expected one file (or DICOM folder) per input channel")
    channels, first = [], None
    for p in map(Path, paths):
        data, affine, header, spacing = _load_one(p)
        data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 and all(s == 1 for s in data.shape[3:]) else data
        if data.ndim != 3 or min(data.shape) < 2:
            raise ValueError(f"{str(p)!r}: expected a 3D volume, found an image of shape {data.shape}")
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise ValueError(f"{str(p)!r} holds {bad} NaN/inf voxel(s): expected finite intensities everywhere")
        if first is None:
            first = (data.shape, affine, header, spacing)
        elif data.shape != first[0]:
            raise ValueError(
                f"{str(p)!r} has shape {data.shape} but the first input has {first[0]}: every channel file must "
                "cover the same voxel grid (resample them to one grid first)"
            )
        elif not np.allclose(affine, first[1], atol=1e-3):
            logger.warning("%s: affine differs from the first input's; using the first one", p)
        channels.append(data.transpose(2, 1, 0))  # (x, y, z) -> nnU-Net (z, y, x)
    assert first is not None
    return LoadedImage(
        array=np.ascontiguousarray(np.stack(channels).astype(np.float32, copy=False)),
        spacing=tuple(reversed(first[3])),  # type: ignore[arg-type]
        affine=first[1],
        header=first[2],
        paths=[str(p) for p in paths],
    )


# ---------------------------------------------------------------------------------------------------------------
# Crop
# ---------------------------------------------------------------------------------------------------------------
def crop_to_nonzero(array: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """Crop ``(C, Z, Y, X)`` to the bounding box of voxels nonzero in any channel (nnU-Net v1 ``crop_to_nonzero``).

    Returns the cropped array and the box ``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open). An all-zero image is
    kept whole.
    """
    mask = (array != 0).any(axis=0)
    if not mask.any():
        return array, [[0, s] for s in array.shape[1:]]
    bbox = []
    for ax in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        bbox.append([int(hit[0]), int(hit[-1]) + 1])
    sl = tuple(slice(a, b) for a, b in bbox)
    return np.ascontiguousarray(array[(slice(None),) + sl]), bbox


# ---------------------------------------------------------------------------------------------------------------
# Resampling (skimage.transform.resize / scipy.ndimage semantics, in torch)
# ---------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and the whole pipeline
# ---------------------------------------------------------------------------------------------------------------
def normalize(data: torch.Tensor, modalities: Sequence[str], config: PreprocessingConfig) -> torch.Tensor:
    """Per-channel intensity normalisation of ``(C, Z, Y, X)`` by modality (``config.scheme_for``).

    ``clip_rescale`` is MONAI ``ScaleIntensityRange(low, high, 0, 1, clip=True)``; ``zscore`` is
    ``(x - mean) / (std + 1e-8)`` over the whole (cropped) volume, as the official preprocessor does.
    """
    from monai.transforms import ScaleIntensityRange

    if len(modalities) != data.shape[0]:
        raise ValueError(f"{data.shape[0]} image channel(s) but {len(modalities)} modalities {list(modalities)}")
    out = torch.empty_like(data, dtype=torch.float32)
    for c, mod in enumerate(modalities):
        spec = config.scheme_for(mod)
        ch = data[c].to(torch.float32)
        if spec["scheme"] == "clip_rescale":
            tr = ScaleIntensityRange(a_min=spec["low"], a_max=spec["high"], b_min=0.0, b_max=1.0, clip=True)
            out[c] = torch.as_tensor(tr(ch))
        else:
            mean, std = ch.double().mean(), ch.double().std(unbiased=False)
            out[c] = ((ch.double() - mean) / (std + 1e-8)).float()
    return out


@dataclass
class Preprocessed:
    """The network input and everything needed to map a prediction back onto the input grid.

    Attributes:
        data: ``(C, D, H, W)`` float32 tensor at the target spacing.
        spacing: input spacing ``(z, y, x)``; ``target_spacing``: the network's.
        original_shape: input ``(Z, Y, X)``; ``bbox``: crop box in it; ``cropped_shape``: the box's shape.
        affine, header: the input file's geometry, for writing the result.
    """

    data: torch.Tensor
    spacing: tuple[float, ...]
    target_spacing: tuple[float, ...]
    original_shape: tuple[int, ...]
    bbox: list[list[int]]
    cropped_shape: tuple[int, ...]
    affine: np.ndarray
    header: Any = None


def preprocess(
    image: LoadedImage,
    modalities: Sequence[str],
    config: PreprocessingConfig,
    spacing: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> Preprocessed:
    """Crop, resample and normalise a loaded scan as the official ``DoDNetPreprocessor`` does.

    Args:
        image: from :func:`load_image`, ``(C, Z, Y, X)``.
        modalities: one modality name per channel (the task's ``TaskSpec.modalities``).
        config: the weights' preprocessing contract.
        spacing: target spacing ``(z, y, x)`` overriding ``config.spacing`` (e.g. coarser for speed).
        device: where to resample (a GPU makes the cubic resize of large CTs fast).
    """
    if config.orientation is not None:
        raise NotImplementedError(
            f"preprocessing.orientation={config.orientation!r}: only None (keep the file's voxel order, as the "
            "official nnU-Net v1 pipeline does) is supported"
        )
    target = tuple(float(s) for s in (spacing if spacing is not None else config.spacing))
    cropped, bbox = crop_to_nonzero(image.array)
    new_shape = target_shape(cropped.shape[1:], image.spacing, target)
    if min(new_shape) < 1:
        raise ValueError(f"target spacing {target} leaves an empty volume for input shape {cropped.shape[1:]}")
    axis = separate_z_axis(image.spacing, target)
    data = torch.as_tensor(cropped, device=device).double()
    data = resample_volume(data, new_shape, order=3, separate_axis=axis, order_z=0).float()
    data = normalize(data, modalities, config)
    return Preprocessed(
        data=data,
        spacing=tuple(image.spacing),
        target_spacing=target,
        original_shape=tuple(image.array.shape[1:]),
        bbox=bbox,
        cropped_shape=tuple(cropped.shape[1:]),
        affine=image.affine,
        header=image.header,
    )


# ---------------------------------------------------------------------------------------------------------------
# Back to the input grid
# ---------------------------------------------------------------------------------------------------------------
def _resample_back(channel: torch.Tensor, pre: Preprocessed) -> torch.Tensor:
    """One ``(D, H, W)`` channel at network resolution → the cropped input grid (order 1, z order 0)."""
    axis = separate_z_axis(pre.spacing, pre.target_spacing)
    return resample_volume(channel[None], pre.cropped_shape, order=1, separate_axis=axis, order_z=0)[0]


def restore_labels(
    scores: torch.Tensor,
    pre: Preprocessed,
    labels: Sequence[int] | None = None,
    return_scores: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Map per-class scores at network resolution back to the input grid and take the argmax.

    What nnU-Net v1 ``save_segmentation_nifti_from_softmax`` does: resize each channel to the cropped input
    shape (order 1; order 0 along an anisotropic axis), argmax (first maximum wins), label outside the crop box 0.
    Channels are processed one at a time (running argmax), so memory stays at a few input-sized arrays.

    Args:
        scores: ``(K, D, H, W)`` probabilities (or a one-hot map) at network resolution.
        pre: the :class:`Preprocessed` the prediction was made from.
        labels: label value of each channel (default ``0..K-1``).
        return_scores: also return the resized scores, ``(K, Z, Y, X)`` float16 on the full input grid
            (background 1 outside the crop box).

    Returns:
        ``(labels (Z, Y, X) uint8, scores or None)``.
    """
    labels = list(range(scores.shape[0])) if labels is None else list(labels)
    if len(labels) != scores.shape[0] or max(labels) > 255:
        raise ValueError(f"need one label (<= 255) per score channel: {len(labels)} labels for {scores.shape[0]} channels")
    best = best_label = None
    full = None
    if return_scores:
        full = np.zeros((scores.shape[0], *pre.original_shape), dtype=np.float16)
        full[0] = 1
    sl = tuple(slice(a, b) for a, b in pre.bbox)
    for k in range(scores.shape[0]):
        ch = _resample_back(scores[k], pre)
        if full is not None:
            full[(k,) + sl] = ch.cpu().numpy()
        if best is None:
            best, best_label = ch, torch.full_like(ch, labels[k], dtype=torch.uint8)
        else:
            win = ch > best
            best = torch.where(win, ch, best)
            best_label[win] = labels[k]
    out = np.zeros(pre.original_shape, dtype=np.uint8)
    out[sl] = best_label.cpu().numpy()
    return out, full


def labels_to_nifti(labels_zyx: np.ndarray, pre: Preprocessed) -> nib.Nifti1Image:
    """A uint8 NIfTI of ``labels_zyx`` on the input's voxel grid, with the input's affine (and header)."""
    if tuple(labels_zyx.shape) != tuple(pre.original_shape):
        raise ValueError(f"label map of shape {labels_zyx.shape} does not match the input grid {pre.original_shape}")
    data = np.ascontiguousarray(labels_zyx.transpose(2, 1, 0).astype(np.uint8))
    header = pre.header.copy() if isinstance(pre.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(data, pre.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    if header is not None:  # keep the input's qform/sform codes, with our affine in both
        img.set_qform(pre.affine, code=int(header["qform_code"]) or 1)
        img.set_sform(pre.affine, code=int(header["sform_code"]) or 1)
    return img
