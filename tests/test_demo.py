"""The demo's data preparation (real template scans) and its pipeline with tiny budgets; the full demo is slow."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from uniseg_hub.demo import DEFAULT_WEIGHTS, DemoBudget, format_table, main, plot_comparison, run_demo
from uniseg_hub.demo_data import (
    AAL_DEEP_GREY,
    AAL_LOBES,
    UPSTREAM_TASKS,
    aal_group_map,
    aal_names,
    demo_model_config,
    ensure_mricron,
    hemisphere_split,
    mricron_dir,
    nilearn_data_dir,
    task_cases,
)

NILEARN = nilearn_data_dir()
MRICRON = mricron_dir()
needs_nilearn = pytest.mark.skipif(NILEARN is None, reason="nilearn's bundled MNI152 data is not installed")
needs_mricron = pytest.mark.skipif(MRICRON is None, reason="Debian mricron-data is not installed")
needs_weights = pytest.mark.skipif(not (DEFAULT_WEIGHTS / "config.json").is_file(), reason="embedded demo weights missing")


def test_hemisphere_split_follows_world_x():
    image = np.arange(2 * 3 * 4 * 10, dtype=np.float32).reshape(2, 3, 4, 10)
    label = np.zeros((3, 4, 10), np.int16)
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    ras[0, 3] = -9.0  # voxel i sits at world x = 2 i - 9: i <= 4 left (x < 0), i >= 5 right
    (li, ll), (ri, rl) = hemisphere_split(image, label, ras)
    np.testing.assert_array_equal(li, image[..., :5])
    np.testing.assert_array_equal(ri, image[..., 5:])
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    las[0, 3] = 9.0  # world x = 9 - 2 i: i <= 4 right, i >= 5 left
    (li, _), (ri, _) = hemisphere_split(image, label, las)
    np.testing.assert_array_equal(li, image[..., 5:])
    np.testing.assert_array_equal(ri, image[..., :5])
    with pytest.raises(ValueError, match="axis-aligned"):
        hemisphere_split(image, label, np.array([[0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]]))


@needs_mricron
def test_aal_groups_cover_every_region_once():
    names = aal_names(MRICRON / "aal.nii.txt")
    assert len(names) == 116 and names[1] == "Precentral_L"
    lobes, deep = aal_group_map(names, AAL_LOBES), aal_group_map(names, AAL_DEEP_GREY)
    assert np.all((lobes[1:] > 0) ^ (deep[1:] > 0))  # every region in exactly one of the two tasks
    assert sorted(names[v] for v in range(1, 117) if deep[v] == 3) == ["Pallidum_L", "Pallidum_R"]
    assert {names[v] for v in range(1, 117) if lobes[v] == 6} >= {"Cerebelum_Crus1_L", "Vermis_10"}


@needs_nilearn
def test_tissue_task_cases_are_real_hemispheres():
    (train,), (val,) = task_cases(["tissue"], spacing=4.0, task_ids=[0])
    assert train.task_id == 0 and train.meta["hemisphere"] == "left" and val.meta["hemisphere"] == "right"
    assert train.image.shape[:3] == val.image.shape[:3] and train.image.dtype == np.float32
    assert abs(train.image.shape[3] - val.image.shape[3]) <= 1 and train.spacing == (4.0, 4.0, 4.0)
    # independent truth: GM/WM volume fractions of the 1 mm probability maps (left hemisphere: world x < 0)
    gm = nib.load(NILEARN / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm = np.asanyarray(nib.load(NILEARN / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj).astype(np.float32)
    g = np.asanyarray(gm.dataobj).astype(np.float32)
    left = (gm.affine[0, 0] * np.arange(g.shape[0]) + gm.affine[0, 3]) < 0
    bg = np.clip(255 - g - wm, 0, None)
    truth = np.stack([bg, g, wm]).argmax(0)[left]
    for k in (1, 2):
        mm3_truth = (truth == k).sum() * 1.0
        mm3_case = (train.label == k).sum() * 64.0
        assert mm3_case == pytest.approx(mm3_truth, rel=0.1)
    assert set(np.unique(train.label)) == {0, 1, 2}


@needs_mricron
def test_ensure_mricron_finds_the_installed_package():
    path, note = ensure_mricron(install=False)
    assert path == MRICRON and "found" in note


def test_demo_config_is_small():
    cfg = demo_model_config()
    from uniseg_hub import UniSeg

    n = sum(p.numel() for p in UniSeg(cfg).parameters())
    assert n * 4 < 5 * 2**20  # float32 weights under 5 MB
    assert cfg.num_tasks == len(UPSTREAM_TASKS) and cfg.num_classes == 7 and cfg.prompt_size == [4, 6, 4]


def _fake_result(mean_pre: float, mean_scratch: float) -> dict:
    def run(m: float) -> dict:
        hist = [{"epoch": 1, "train_loss": 1.0, "val_mean_dice": m / 4}, {"epoch": 2, "train_loss": 1 - m, "val_mean_dice": m}]
        return {"dice": {"caudate": m, "putamen": float("nan")}, "hd95": {"caudate": 4.0, "putamen": float("nan")},
                "mean_dice": m, "mean_hd95": 4.0, "wall_time_s": 10.0, "peak_memory_mb": 1.0, "history": hist}

    return {"task": "deep_grey", "note": "held-out task", "disclaimer": "DEMONSTRATION", "split": "left/right",
            "budget": {"epochs": 2, "iterations": 3, "batch_size": 2, "val_every": 1}, "classes": ["caudate", "putamen"],
            "runs": {"pretrained": run(mean_pre), "from_scratch": run(mean_scratch)}}


def test_format_table_and_curves(tmp_path):
    res = _fake_result(0.5, 0.25)
    table = format_table(res)
    assert "| caudate | 0.500 | 0.250 | 4.0 | 4.0 |" in table and "| putamen | – | – | – | – |" in table
    assert "**0.500**" in table and "DEMONSTRATION" in table
    path = plot_comparison({k: v["history"] for k, v in res["runs"].items()}, tmp_path / "c.png")
    with Image.open(path) as im:
        assert im.size == (720, 520)
        px = np.asarray(im.convert("RGB"))
    assert (px == [31, 119, 180]).all(-1).sum() > 50 and (px == [214, 39, 40]).all(-1).sum() > 50  # both runs drawn


@needs_nilearn
@needs_weights
def test_run_demo_tiny_budget_nilearn_only(tmp_path):
    res = run_demo(tmp_path, budget=DemoBudget(epochs=1, iterations=2, batch_size=1, val_every=1), mricron=None, spacing=6.0)
    assert res["task"] == "tissue" and "fallback" in res["note"] and res["classes"] == ["grey matter", "white matter"]
    assert "DEMONSTRATION" in res["disclaimer"]
    for run in res["runs"].values():
        assert all(0 <= v <= 1 for v in run["dice"].values() if not math.isnan(v))
    assert "matched" in res["load_report"] and "random init" in res["load_report"]
    for f in res["files"]:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size[0] > 100
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["runs"]["pretrained"]["mean_dice"] == pytest.approx(res["runs"]["pretrained"]["mean_dice"], nan_ok=True)
    assert (tmp_path / "pretrained" / "log.json").is_file() and (tmp_path / "from_scratch" / "log.json").is_file()


@pytest.mark.slow
@needs_weights
def test_full_demo(tmp_path, capsys):
    assert main(["-o", str(tmp_path), "--no-install"]) == 0
    out = capsys.readouterr().out
    assert "| **mean** |" in out and "Dice pretrained" in out
    res = json.loads((tmp_path / "demo_results.json").read_text())
    assert res["total_time_s"] < 600
