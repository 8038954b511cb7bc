"""Preprocessing vs the official ``nnUNet_predict`` network input (e2e fixtures), resampling against analytic
truths, scan IO (NIfTI, DICOM series) and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from uniseg_hub.config import PreprocessingConfig
from uniseg_hub.preprocessing import (
    crop_to_nonzero,
    load_image,
    preprocess,
    resample_volume,
    resize_axis,
    separate_z_axis,
    target_shape,
)

from .conftest import REF

E2E = REF / "e2e"


def _cases() -> list[dict]:
    return json.loads((E2E / "e2e_cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def e2e_arrays() -> dict[str, np.ndarray]:
    with np.load(E2E / "e2e_arrays.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_preprocessing_matches_official(case, e2e_arrays):
    image = load_image([E2E / f for f in case["inputs"]])
    assert list(image.array.shape[1:]) == case["input_shape_zyx"]
    np.testing.assert_allclose(image.spacing, case["input_spacing_zyx"], rtol=1e-6)
    spacing = [float(s) for s in case["spacing_arg"].split(",")]
    pre = preprocess(image, case["modality"].split(","), PreprocessingConfig(spacing=spacing))
    ref = e2e_arrays[f"{case['name']}/preprocessed"]
    assert list(pre.data.shape) == case["preprocessed_shape"] == list(ref.shape)
    # measured: CT channels bitwise equal, the PET z-score within 1e-6 (float32 mean/std summation order)
    assert float((pre.data - torch.from_numpy(ref)).abs().max()) <= 1e-5


def test_crop_to_nonzero_box():
    a = np.zeros((2, 5, 6, 7), np.float32)
    a[0, 1, 2, 3] = 1
    a[1, 3, 4, 5] = -2  # nonzero in any channel counts
    cropped, bbox = crop_to_nonzero(a)
    assert bbox == [[1, 4], [2, 5], [3, 6]] and cropped.shape == (2, 3, 3, 3)
    assert crop_to_nonzero(np.zeros((1, 2, 3, 4)))[1] == [[0, 2], [0, 3], [0, 4]]


def test_target_shape_and_separate_axis_follow_nnunet():
    assert target_shape([46, 100, 104], [2.5, 0.8, 0.8], [3, 1.5, 1.5]) == [38, 53, 55]
    assert target_shape([5], [1.0], [2.0]) == [2]  # 2.5 rounds half to even, like np.round
    assert separate_z_axis([2.5, 0.8, 0.8], [3, 1.5, 1.5]) == 0  # anisotropic source
    assert separate_z_axis([1.0, 1.0, 1.0], [5.0, 1.0, 1.0]) == 0  # anisotropic target
    assert separate_z_axis([2.0, 2.0, 2.0], [3.0, 2.0, 2.0]) is None
    assert separate_z_axis([0.24, 1.25, 1.25], [1, 1, 1]) is None  # two low-res axes: no separate axis


def test_resize_axis_analytic():
    n, m = 40, 97
    ramp = torch.arange(n, dtype=torch.float64)
    src = (torch.arange(m, dtype=torch.float64) + 0.5) * n / m - 0.5  # grid_mode coordinates
    # linear interpolation of a ramp is the ramp at the source coordinate, edge value outside
    torch.testing.assert_close(resize_axis(ramp, 0, m, 1), src.clamp(0, n - 1))
    # nearest: index floor(c + 0.5), clamped
    torch.testing.assert_close(resize_axis(ramp, 0, m, 0), torch.floor(src + 0.5).clamp(0, n - 1))
    # cubic B-spline interpolation of a smooth signal approximates it (error O(h^4)) away from the edges
    f = lambda t: torch.sin(2 * torch.pi * t / 25.0)  # noqa: E731
    up = resize_axis(f(ramp), 0, m, 3)
    inner = (src > 4) & (src < n - 5)
    assert float((up[inner] - f(src[inner])).abs().max()) < 2e-3
    # along an inner axis of a batch, each line is resized independently
    x = torch.stack([f(ramp), 2 * f(ramp)])[:, None]
    y = resize_axis(x, 2, m, 3)
    torch.testing.assert_close(y[1], 2 * y[0])


def test_resample_volume_clips_to_input_range():
    step = torch.zeros(1, 6, 6, 6, dtype=torch.float64)
    step[:, :, :, 3:] = 1  # cubic splines overshoot at a step; skimage clips to the input range
    up = resample_volume(step, [6, 6, 17], order=3)
    assert float(up.min()) >= 0 and float(up.max()) <= 1
    assert float(resize_axis(step, 3, 17, 3).max()) > 1  # ... and the overshoot is real without clipping


def _write_nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> Path:
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image(tmp_path / "missing.nii.gz")
    txt = tmp_path / "scan.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="not a NIfTI file or a DICOM series folder"):
        load_image(txt)
    with pytest.raises(ValueError, match="expected a 3D volume"):
        load_image(_write_nifti(tmp_path / "flat.nii.gz", np.zeros((20, 30), np.float32)))
    with pytest.raises(ValueError, match="expected a 3D volume"):
        load_image(_write_nifti(tmp_path / "slab.nii.gz", np.zeros((20, 30, 1), np.float32)))
    bad = np.zeros((8, 8, 8), np.float32)
    bad[1, 2, 3] = np.nan
    bad[2, 2, 2] = np.inf
    with pytest.raises(ValueError, match="2 NaN/inf voxel"):
        load_image(_write_nifti(tmp_path / "nan.nii.gz", bad))
    a = _write_nifti(tmp_path / "a.nii.gz", np.ones((8, 8, 8), np.float32))
    b = _write_nifti(tmp_path / "b.nii.gz", np.ones((8, 8, 9), np.float32))
    with pytest.raises(ValueError, match="same voxel grid"):
        load_image([a, b])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty folder"):
        load_image(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.dcm").write_bytes(b"not dicom")
    with pytest.raises(ValueError, match="not a readable DICOM series"):
        load_image(tmp_path / "junk")


def _write_dicom_series(folder: Path, vol_xyz: np.ndarray, spacing_xyz, intercept: float) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    nx, ny, nz = vol_xyz.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality, ds.InstanceNumber = series, study, "CT", k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing_xyz[2])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing_xyz[1], spacing_xyz[0]], spacing_xyz[2]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ny, nx, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1.0
        ds.PixelData = np.ascontiguousarray(vol_xyz[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(folder / f"img{nz - k:03d}.dcm", enforce_file_format=True)  # names in reverse slice order


def test_dicom_series_folder(tmp_path):
    vol = np.random.default_rng(0).integers(0, 2000, (6, 8, 4)).astype(np.int16)  # (x, y, z)
    _write_dicom_series(tmp_path / "series", vol, (0.7, 0.9, 2.5), intercept=-1024.0)
    image = load_image(tmp_path / "series")
    assert image.array.shape == (1, 4, 8, 6)
    np.testing.assert_array_equal(image.array[0], vol.transpose(2, 1, 0).astype(np.float32) - 1024.0)
    np.testing.assert_allclose(image.spacing, (2.5, 0.9, 0.7), rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), (0.7, 0.9, 2.5), rtol=1e-6)
