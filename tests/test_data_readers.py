"""Readers (BTCV, VS, nnU-Net raw), tasks of a data folder, and planning + preprocessing of the benchmark
layouts, on real scans (nilearn's MNI152). nnU-Net v1 rules and the peers are tested in test_preprocessing.py.

The data sets are tiny: the MNI152 2009a T1 subsampled to 5-6 mm, with a grey/white-matter label map from its
probability maps, written to a tmp folder in each public layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scipy.ndimage import binary_fill_holes

from uniseg_hub.config import PreprocessingConfig
from uniseg_hub.data import btcv_cases, nnunet_raw_cases, vs_cases
from uniseg_hub.demo.data import nilearn_data_dir
from uniseg_hub.preprocessing import benchmark_task, load_downstream, nnunet_raw_task, preprocess_case

NILEARN = nilearn_data_dir()
pytestmark = pytest.mark.skipif(NILEARN is None, reason="nilearn's bundled MNI152 data is not installed")


def mni_volumes(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 T1 (int16) and a 0/1/2 GM/WM label, subsampled by ``step`` (nibabel (x, y, z) order) + affine."""
    t1 = nib.load(NILEARN / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = np.asanyarray(nib.load(NILEARN / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").dataobj).astype(np.float32)
    wm = np.asanyarray(nib.load(NILEARN / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj).astype(np.float32)
    img = np.asanyarray(t1.dataobj).astype(np.int16)
    lab = np.where((gm >= wm) & (gm > 127), 1, np.where(wm > 127, 2, 0)).astype(np.uint8)
    lab[img == 0] = 0
    aff = t1.affine.copy()
    aff[:3, :3] *= step
    s = slice(None, None, step)
    return img[s, s, s], lab[s, s, s], aff


def _save(arr: np.ndarray, aff: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), path)


def write_btcv(root: Path, cases: dict[int, int]) -> Path:
    """BTCV public layout: ``RawData/Training/img/imgNNNN.nii.gz`` (+ label); ``cases`` = {N: subsampling step}."""
    for k, step in cases.items():
        img, lab, aff = mni_volumes(step)
        _save(img, aff, root / "RawData" / "Training" / "img" / f"img{k:04d}.nii.gz")
        _save(lab, aff, root / "RawData" / "Training" / "label" / f"label{k:04d}.nii.gz")
    return root


def write_vs(root: Path, cases: dict[str, int]) -> Path:
    """VS public layout: ``VS-SEG/vs_gk_N/vs_gk_t1_refT1.nii.gz`` + ``vs_gk_seg_refT1.nii.gz`` (label 1 = WM)."""
    for name, step in cases.items():
        img, lab, aff = mni_volumes(step)
        _save(img, aff, root / "VS-SEG" / name / "vs_gk_t1_refT1.nii.gz")
        _save((lab == 2).astype(np.uint8), aff, root / "VS-SEG" / name / "vs_gk_seg_refT1.nii.gz")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------
def test_btcv_public_layout_and_missing_files(tmp_path):
    write_btcv(tmp_path, {1: 6, 32: 6})
    cases = btcv_cases(tmp_path, ["bcv_1", "bcv_32"])
    assert [c.name for c in cases] == ["bcv_1", "bcv_32"]
    assert cases[0].images[0] == tmp_path / "RawData/Training/img/img0001.nii.gz"
    assert cases[1].label == tmp_path / "RawData/Training/label/label0032.nii.gz"
    assert btcv_cases(tmp_path / "RawData" / "Training", ["bcv_1"])[0].images == cases[0].images
    with pytest.raises(FileNotFoundError) as e:
        btcv_cases(tmp_path)  # the 30 official cases
    msg = str(e.value)
    assert "56 of the files expected for 30 cases are missing" in msg
    assert str(tmp_path / "RawData/Training/img/img0002.nii.gz") in msg and "imgNNNN.nii.gz" in msg
    with pytest.raises(ValueError, match="bcv_N"):
        btcv_cases(tmp_path, ["img0001"])


def test_vs_public_layout_and_missing_files(tmp_path):
    write_vs(tmp_path, {"vs_gk_54": 6})
    (case,) = vs_cases(tmp_path, ["vs_gk_54"])
    assert case.images == (tmp_path / "VS-SEG/vs_gk_54/vs_gk_t1_refT1.nii.gz",)
    assert case.label == tmp_path / "VS-SEG/vs_gk_54/vs_gk_seg_refT1.nii.gz"
    with pytest.raises(FileNotFoundError, match=r"VS-SEG/vs_gk_212/vs_gk_t1_refT1\.nii\.gz"):
        vs_cases(tmp_path, ["vs_gk_54", "vs_gk_212"])


def test_nnunet_raw_layout(tmp_path):
    img, lab, aff = mni_volumes(6)
    for n in ("bcv_1", "bcv_2", "bcv_10"):
        _save(img, aff, tmp_path / "imagesTr" / f"{n}_0000.nii.gz")
        _save(lab, aff, tmp_path / "labelsTr" / f"{n}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "a"}}))
    assert [c.name for c in nnunet_raw_cases(tmp_path)] == ["bcv_1", "bcv_2", "bcv_10"]  # natural order
    # the BTCV reader recognises the nnU-Net raw layout of the official conversion script
    (case,) = btcv_cases(tmp_path, ["bcv_10"])
    assert case.images == (tmp_path / "imagesTr/bcv_10_0000.nii.gz",) and case.label == tmp_path / "labelsTr/bcv_10.nii.gz"
    with pytest.raises(FileNotFoundError, match=r"labelsTr/bcv_3\.nii\.gz"):
        nnunet_raw_cases(tmp_path, ["bcv_1", "bcv_3"])


# ---------------------------------------------------------------------------------------------------------------
# Tasks of a data folder
# ---------------------------------------------------------------------------------------------------------------
def test_nnunet_raw_task_from_dataset_json(tmp_path):
    meta = {"name": "Task099_Toy", "modality": {"1": "FLAIR", "0": "T1"}, "labels": {"0": "background", "3": "b", "1": "a"}}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    task = nnunet_raw_task(tmp_path)
    assert (task.name, task.num_classes, task.modalities, task.label_values) == ("Task099_Toy", 3, ["T1", "FLAIR"], [0, 1, 3])
    # nnU-Net v2 spelling: channel_names, labels name -> value; no name: the folder's
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}))
    task = nnunet_raw_task(tmp_path)
    assert (task.name, task.labels, task.modalities) == (tmp_path.name, {"1": "liver"}, ["CT"])
    for bad, match in (({"modality": {"0": "CT"}}, "no 'labels' entry"), ({"labels": {"0": "bg", "1": "a"}}, "no 'modality' entry"),
                       ({"modality": {"0": "CT"}, "labels": {"0": "background"}}, "no foreground label"),
                       ({"modality": {"1": "CT"}, "labels": {"0": "bg", "1": "a"}}, "channel numbers 0..0")):
        (tmp_path / "dataset.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            nnunet_raw_task(tmp_path)
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        nnunet_raw_task(tmp_path)


def test_benchmark_tasks():
    btcv, vs = benchmark_task("btcv"), benchmark_task("VS")
    assert (btcv.name, btcv.num_classes, btcv.modalities, btcv.label_values) == ("BTCV", 14, ["CT"], list(range(14)))
    assert (vs.name, vs.num_classes, vs.modalities) == ("VS", 2, ["MR"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmark_task("kits")


# ---------------------------------------------------------------------------------------------------------------
# Planning and preprocessing of real scans in the benchmark layouts
# ---------------------------------------------------------------------------------------------------------------
def test_preprocess_keeps_voxel_order_crops_and_normalises(tmp_path):
    write_vs(tmp_path, {"vs_gk_54": 6})
    (raw,) = vs_cases(tmp_path, ["vs_gk_54"])
    plan = PreprocessingConfig(spacing=[6.0, 6.0, 6.0], normalization={"MR": {"scheme": "zscore"}})  # no resampling
    case = preprocess_case(raw, plan, benchmark_task("vs"))
    img = np.asanyarray(nib.load(raw.images[0]).dataobj).astype(np.float32).transpose(2, 1, 0)  # (z, y, x)
    lab = np.asanyarray(nib.load(raw.label).dataobj).transpose(2, 1, 0).astype(np.int16)
    nz = np.argwhere(img != 0)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(nz.min(0), nz.max(0)))
    crop = img[box].astype(np.float64)
    assert case.image.shape == (1, *crop.shape)
    np.testing.assert_allclose(case.image[0], (crop - crop.mean()) / crop.std(), atol=1e-5)
    # outside the (hole-filled) nonzero region background is -1; the brain's labels are kept
    outside = ~binary_fill_holes(img[box] != 0)
    assert outside.any()
    np.testing.assert_array_equal(case.label, np.where(outside & (lab[box] == 0), -1, lab[box]))
    assert case.meta["bbox"] == [[int(b.start), int(b.stop)] for b in box]
    assert case.spacing == (6.0, 6.0, 6.0) and case.meta["spacing"] == pytest.approx([6.0, 6.0, 6.0])


def test_load_downstream_plans_and_resamples(tmp_path):
    write_btcv(tmp_path, {1: 3, 32: 4})  # train bcv_1 at 3 mm, val bcv_32 at 4 mm
    data = load_downstream("btcv", tmp_path, max_train=1, max_val=1)
    assert data.name == "BTCV" and data.num_classes == 14 and data.in_channels == 1 and data.modalities == ["CT"]
    assert data.task == benchmark_task("btcv") and data.labels[1] == "spleen"
    assert data.plan.spacing == pytest.approx([3.0, 3.0, 3.0])
    assert data.plan.normalization["CT"]["scheme"] == "ct" and not data.plan.normalization["CT"]["use_nonzero_mask"]
    (train,), (val,) = data.train, data.val
    assert val.spacing == (3.0, 3.0, 3.0)
    for n_val, n_raw in zip(val.image.shape[1:], val.meta["cropped_shape"]):
        assert n_val == round(n_raw * 4 / 3)
    assert set(np.unique(val.label)) <= {-1, 0, 1, 2} and {1, 2} <= set(np.unique(val.label))
    # same tissue fractions at both resolutions (within a few percent)
    for k in (1, 2):
        assert (val.label == k).mean() == pytest.approx((train.label == k).mean(), rel=0.1)
    assert val.image.dtype == np.float32 and val.label.dtype == np.int16
    again = load_downstream("btcv", tmp_path, max_train=1, max_val=1, plan=data.plan)
    np.testing.assert_array_equal(again.val[0].image, val.image)
