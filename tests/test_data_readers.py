"""Readers (BTCV, VS, nnU-Net raw), nnU-Net v1 planning and preprocessing, on real scans (nilearn's MNI152).

The data sets are tiny: the MNI152 2009a T1 subsampled to 5-6 mm, with a grey/white-matter label map from its
probability maps, written to a tmp folder in each public layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from uniseg_hub.data import (
    DatasetPlan,
    btcv_cases,
    intensity_properties,
    load_cases,
    nnunet_raw_cases,
    normalize_channel,
    plan_dataset,
    preprocess_case,
    target_spacing,
    vs_cases,
)
from uniseg_hub.data.planning import use_mask_for_norm
from uniseg_hub.demo_data import nilearn_data_dir

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
# Planning (analytic cases of nnU-Net v1's rules)
# ---------------------------------------------------------------------------------------------------------------
def test_target_spacing_median_and_anisotropic_rule():
    assert target_spacing([[1, 1, 1], [2, 2, 2], [4, 4, 4]], [[100] * 3] * 3) == [2, 2, 2]
    # coarse z (5 mm vs 0.8 mm) with few slices: z takes the 10th percentile of its spacings
    sp = [[5.0, 0.8, 0.8], [1.0, 0.8, 0.8], [5.0, 0.7, 0.7]]
    assert target_spacing(sp, [[30, 512, 512]] * 3) == pytest.approx([1.0 + 0.2 * 4.0, 0.8, 0.8])
    # anisotropic spacing but as many slices as in-plane voxels: plain median
    assert target_spacing(sp, [[512, 512, 512]] * 3) == [5.0, 0.8, 0.8]
    # the 10th percentile is never finer than the in-plane spacing
    assert target_spacing([[5.0, 1, 1], [0.5, 1, 1], [6, 1, 1], [7, 1, 1]] * 2, [[20, 400, 400]] * 8) == pytest.approx([1.00001, 1, 1], abs=1e-7)


def test_intensity_properties_and_ct_normalisation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(100, 20, 5000), rng.normal(50, 10, 3000)
    props = intensity_properties([a, b])
    v = np.concatenate([a, b])
    assert props["mean"] == pytest.approx(v.mean()) and props["sd"] == pytest.approx(v.std())
    assert props["percentile_00_5"] == pytest.approx(np.percentile(v, 0.5))
    x = rng.normal(80, 60, (4, 5, 6)).astype(np.float32)
    expected = (np.clip(x, props["percentile_00_5"], props["percentile_99_5"]) - v.mean()) / v.std()
    np.testing.assert_allclose(normalize_channel(x, "CT", props), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no foreground"):
        intensity_properties([np.empty(0)])


def test_mr_normalisation_and_mask_rule():
    x = np.zeros((4, 6, 6), np.float32)
    x[1:3, 2:5, 2:5] = np.arange(18).reshape(2, 3, 3) + 10
    z = normalize_channel(x, "MR")
    assert z.mean() == pytest.approx(0, abs=1e-6) and z.std() == pytest.approx(1, abs=1e-4)
    zm = normalize_channel(x, "MR", mask=x > 0)
    assert np.all(zm[x == 0] == 0) and zm[x > 0].mean() == pytest.approx(0, abs=1e-6) and zm[x > 0].std() == pytest.approx(1, abs=1e-4)
    assert not use_mask_for_norm("CT", [0.1]) and use_mask_for_norm("MR", [0.5, 0.6, 0.9]) and not use_mask_for_norm("MR", [0.8, 0.9])


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing of real scans
# ---------------------------------------------------------------------------------------------------------------
def test_plan_dataset_matches_nnunet_rules_on_real_scans(tmp_path):
    write_btcv(tmp_path, {1: 5, 2: 6, 3: 6})
    raw = btcv_cases(tmp_path, ["bcv_1", "bcv_2", "bcv_3"])
    plan = plan_dataset(raw, ["CT"])
    assert plan.spacing == pytest.approx([6.0, 6.0, 6.0])  # median of 5, 6, 6 mm
    # independent truth: every 10th foreground voxel of the (z, y, x) arrays, read with nibabel
    samples = []
    for c in raw:
        img = np.asanyarray(nib.load(c.images[0]).dataobj).transpose(2, 1, 0).astype(np.float64)
        lab = np.asanyarray(nib.load(c.label).dataobj).transpose(2, 1, 0)
        samples.append(img[lab > 0][::10])
    v = np.concatenate(samples)
    props = plan.intensity[0]
    assert props["mean"] == pytest.approx(v.mean()) and props["sd"] == pytest.approx(v.std())
    assert props["percentile_00_5"] == pytest.approx(np.percentile(v, 0.5))
    assert props["percentile_99_5"] == pytest.approx(np.percentile(v, 99.5))
    assert plan.use_nonzero_mask == [False]
    assert DatasetPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_preprocess_keeps_voxel_order_crops_and_normalises(tmp_path):
    write_vs(tmp_path, {"vs_gk_54": 6})
    (raw,) = vs_cases(tmp_path, ["vs_gk_54"])
    plan = DatasetPlan(spacing=[6.0, 6.0, 6.0], modalities=["MR"])  # = source spacing: no resampling
    case = preprocess_case(raw, plan)
    img = np.asanyarray(nib.load(raw.images[0]).dataobj).astype(np.float32).transpose(2, 1, 0)  # (z, y, x)
    lab = np.asanyarray(nib.load(raw.label).dataobj).transpose(2, 1, 0)
    nz = np.argwhere(img != 0)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(nz.min(0), nz.max(0)))
    crop = img[box]
    assert case.image.shape == (1, *crop.shape)
    np.testing.assert_allclose(case.image[0], (crop - crop.mean()) / crop.std(), atol=1e-4)
    np.testing.assert_array_equal(case.label, lab[box])
    assert case.meta["bbox"] == [[int(b.start), int(b.stop)] for b in box]
    assert case.spacing == (6.0, 6.0, 6.0) and case.meta["spacing"] == pytest.approx([6.0, 6.0, 6.0])


def test_preprocess_resamples_to_the_plan_spacing(tmp_path):
    write_btcv(tmp_path, {1: 3})
    raw = btcv_cases(tmp_path, ["bcv_1"])
    plan = plan_dataset(raw, ["CT"])
    assert plan.spacing == pytest.approx([3.0, 3.0, 3.0])
    coarse = DatasetPlan(spacing=[6.0, 6.0, 6.0], modalities=["CT"], intensity=plan.intensity)
    fine, (half,) = preprocess_case(raw[0], plan), load_cases(raw, coarse)
    for n_fine, n_half in zip(fine.image.shape[1:], half.image.shape[1:]):
        assert abs(n_half - n_fine / 2) <= 1
    assert set(np.unique(half.label)) == {0, 1, 2}
    # same tissue fractions at both resolutions (within a few percent)
    for k in (1, 2):
        assert (half.label == k).mean() == pytest.approx((fine.label == k).mean(), rel=0.1)
    assert half.image.dtype == np.float32 and half.label.dtype == np.int16
