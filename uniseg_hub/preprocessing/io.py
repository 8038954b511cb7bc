"""Scan and label-map IO: NIfTI files and DICOM series folders in, ``(C, Z, Y, X)`` arrays out.

Axis order is nnU-Net's ``(z, y, x)``: the reversed NIfTI voxel order, which is what SimpleITK gives nnU-Net v1.
Voxel order is never changed (no reorientation), as in nnU-Net v1.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

__all__ = ["LoadedImage", "load_image", "load_label", "read_nifti"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GRID_ATOL = 1e-3  # mm: affines of image and label must agree to this (float32 headers round at ~1e-5)


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


def _squeeze_trailing(data: np.ndarray) -> np.ndarray:
    """Drop trailing singleton axes (``(X, Y, Z, 1)`` → ``(X, Y, Z)``)."""
    if data.ndim > 3 and all(s == 1 for s in data.shape[3:]):
        return np.squeeze(data, axis=tuple(range(3, data.ndim)))
    return data


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


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _load_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray, Any, tuple[float, float, float]]:
    """A folder holding one DICOM series, read with MONAI's ``PydicomReader`` (slices sorted by position, LPS→RAS)."""
    from monai.data import PydicomReader

    files = [f for f in sorted(folder.iterdir()) if f.is_file()]
    if not files:
        raise ValueError(f"{str(folder)!r} is an empty folder: expected a folder of DICOM slices of one series")
    if not any(_has_dicom_preamble(f) for f in files):
        names = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise ValueError(f"{str(folder)!r} holds {len(files)} file(s) ({names}) but no DICOM file (no 'DICM' marker): "
                         "expected a folder of DICOM slices of one series, or a NIfTI file")
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
    channels of different shapes, NaN/inf voxels and constant (blank) volumes.

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
        data = _squeeze_trailing(data)
        if data.ndim != 3 or min(data.shape) < 2:
            raise ValueError(f"{str(p)!r}: expected a 3D volume, found an image of shape {data.shape}")
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise ValueError(f"{str(p)!r} holds {bad} NaN/inf voxel(s): expected finite intensities everywhere")
        lo, hi = float(data.min()), float(data.max())
        if lo == hi:
            raise ValueError(f"{str(p)!r} is constant (every voxel is {lo:g}): expected a scan with contrast — an "
                             "empty, blank or fully masked volume cannot be segmented")
        if first is None:
            first = (data.shape, affine, header, spacing)
        elif data.shape != first[0]:
            raise ValueError(
                f"{str(p)!r} has shape {data.shape} but the first input has {first[0]}: every channel file must "
                "cover the same voxel grid (resample them to one grid first)"
            )
        elif not np.allclose(affine, first[1], atol=_GRID_ATOL):
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


def load_label(path: str | os.PathLike, like: LoadedImage) -> np.ndarray:
    """Read a NIfTI label map on the voxel grid of ``like`` (the case's image).

    Args:
        path: the label map (``.nii`` / ``.nii.gz``), integer values.
        like: the image the labels belong to; its shape and affine must be the label map's.

    Returns:
        ``(Z, Y, X)`` int16 label values, in ``like.array``'s axis order.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: (one line, naming the file and what was found) for a file that is not NIfTI, is not 3D, lies on
            another grid than the image, holds NaN/inf or non-integer values (``0.5``), or values outside int16.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"label map not found: {str(p)!r}")
    if not _is_nifti(p):
        raise ValueError(f"label map {str(p)!r} is not a NIfTI file (.nii/.nii.gz), found suffix {''.join(p.suffixes) or '(none)'!r}")
    try:
        img = nib.load(str(p))
        data = _squeeze_trailing(np.asanyarray(img.dataobj))  # raw dtype; float only when the header scales
    except Exception as e:
        raise ValueError(f"could not read label map {str(p)!r} as NIfTI: {e}") from e
    if data.ndim != 3:
        raise ValueError(f"label map {str(p)!r}: expected a 3D volume, found an array of shape {data.shape}")
    where = like.paths[0] if like.paths else "the image"
    if tuple(data.shape) != tuple(like.shape_xyz):
        raise ValueError(
            f"label map {str(p)!r} has shape {data.shape} (x, y, z) but its image {where!r} has {like.shape_xyz}: "
            "the label map must lie on the image's voxel grid"
        )
    if not np.allclose(np.asarray(img.affine, dtype=np.float64), like.affine, atol=_GRID_ATOL):
        raise ValueError(
            f"label map {str(p)!r} lies on another grid than its image {where!r}: affines differ by up to "
            f"{float(np.abs(img.affine - like.affine).max()):.4g} mm (shape and affine must match)"
        )
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise ValueError(f"label map {str(p)!r} holds {int((~finite).sum())} NaN/inf voxel(s): expected integer labels")
        frac = data != np.rint(data)
        if frac.any():
            example = float(data[frac].flat[0])
            raise ValueError(
                f"label map {str(p)!r} holds {int(frac.sum())} non-integer voxel(s) such as {example:g}: expected "
                "integer label values (a probability map or an interpolated label map?)"
            )
    elif data.dtype.kind not in "iub":
        raise ValueError(f"label map {str(p)!r} has data type {data.dtype}: expected integer label values")
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max:
        raise ValueError(f"label map {str(p)!r} holds values in [{lo:g}, {hi:g}]: expected label values that fit int16")
    return np.ascontiguousarray(data.astype(np.int16).transpose(2, 1, 0))


def read_nifti(path: str | os.PathLike):
    """One NIfTI file as a ``(1, X, Y, Z)`` float32 MONAI ``MetaTensor`` with its affine (for MONAI transforms)."""
    from monai.data import MetaTensor, NibabelReader

    reader = NibabelReader(channel_dim=None)
    data, meta = reader.get_data(reader.read(str(path)))
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, found array shape {data.shape}")
    return MetaTensor(torch.as_tensor(np.asarray(data, dtype=np.float32)[None]), affine=torch.as_tensor(meta["affine"], dtype=torch.float64))
