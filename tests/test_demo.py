"""The demo's data (real template scans written as nnU-Net raw data sets), its pipeline with tiny budgets, the
multi-seed statistics and figures; the full demo (slow) must reproduce the committed record digit for digit."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from uniseg_hub.demo import RECORD, DEFAULT_WEIGHTS, DemoBudget, format_seeds_table, format_table, main, run_demo, summarise_seeds
from uniseg_hub.demo.data import (
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
from uniseg_hub.hub import download

NILEARN = nilearn_data_dir()
MRICRON = mricron_dir()


def test_data_is_installed():
    """``make test`` installs both (nilearn's MNI152, Debian's mricron-data): a missing one is a failure, not a skip."""
    assert NILEARN is not None, "nilearn's bundled MNI152 is missing: pip install --no-deps nilearn==0.14.1"
    assert MRICRON is not None, "Debian mricron-data is missing: make data (apt-get install mricron-data)"
    assert (download(DEFAULT_WEIGHTS) / "config.json").is_file()  # package data: registry name -> folder


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


def test_aal_groups_cover_every_region_once():
    names = aal_names(MRICRON / "aal.nii.txt")
    assert len(names) == 116 and names[1] == "Precentral_L"
    lobes, deep = aal_group_map(names, AAL_LOBES), aal_group_map(names, AAL_DEEP_GREY)
    assert np.all((lobes[1:] > 0) ^ (deep[1:] > 0))  # every region in exactly one of the two tasks
    assert sorted(names[v] for v in range(1, 117) if deep[v] == 3) == ["Pallidum_L", "Pallidum_R"]
    assert {names[v] for v in range(1, 117) if lobes[v] == 6} >= {"Cerebelum_Crus1_L", "Vermis_10"}


def test_tissue_task_cases_are_real_hemispheres(tmp_path):
    contract = demo_model_config(4.0).preprocessing
    (train,), (val,) = task_cases(["tissue"], tmp_path, contract, spacing=4.0, task_ids=[0])
    assert train.task_id == 0 and train.name == "tissue_left" and val.name == "tissue_right"
    assert train.meta["images"][0].endswith("tissue/imagesTr/tissue_left_0000.nii.gz")  # raw files, for the predictor
    assert json.loads((tmp_path / "tissue" / "dataset.json").read_text())["labels"] == {"0": "background", "1": "grey matter", "2": "white matter"}
    assert train.image.dtype == np.float32 and tuple(train.spacing) == (4.0, 4.0, 4.0)
    # independent truth: GM/WM volume fractions of the 1 mm probability maps (left hemisphere: world x < 0)
    gm = nib.load(NILEARN / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm = np.asanyarray(nib.load(NILEARN / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj).astype(np.float32)
    g = np.asanyarray(gm.dataobj).astype(np.float32)
    left = (gm.affine[0, 0] * np.arange(g.shape[0]) + gm.affine[0, 3]) < 0
    bg = np.clip(255 - g - wm, 0, None)
    truth = np.stack([bg, g, wm]).argmax(0)[left]
    for k in (1, 2):
        mm3_truth = (truth == k).sum() * 1.0
        mm3_case = (train.label == k).sum() * 64.0  # the crop to the brain keeps every tissue voxel
        assert mm3_case == pytest.approx(mm3_truth, rel=0.1)
    assert set(np.unique(train.label)) <= {-1, 0, 1, 2} and {1, 2} <= set(np.unique(train.label))


def test_ensure_mricron_finds_the_installed_package():
    path, note = ensure_mricron(install=False)
    assert path == MRICRON and "found" in note


def test_demo_config_is_small():
    cfg = demo_model_config()
    from uniseg_hub import UniSeg

    n = sum(p.numel() for p in UniSeg(cfg).parameters())
    assert n * 4 < 5 * 2**20  # float32 weights under 5 MB
    assert cfg.num_tasks == len(UPSTREAM_TASKS) and cfg.num_classes == 7 and cfg.prompt_size == [4, 6, 4]


def _fake_result(mean_pre: float, mean_scratch: float, seed: int = 0) -> dict:
    def run(m: float) -> dict:
        hist = [{"epoch": 1, "train_loss": 1.0, "val_mean_dice": m / 4}, {"epoch": 2, "train_loss": 1 - m, "val_mean_dice": m}]
        return {"dice": {"caudate": m, "putamen": float("nan")}, "hd95": {"caudate": 4.0, "putamen": float("nan")},
                "mean_dice": m, "mean_hd95": 4.0, "wall_time_s": 10.0, "validation": "predictor", "history": hist}

    return {"task": "deep_grey", "note": "held-out task", "disclaimer": "DEMONSTRATION", "split": "left/right", "seed": seed,
            "budget": {"epochs": 2, "iterations": 3, "batch_size": 2, "val_every": 1}, "classes": ["caudate", "putamen"],
            "runs": {"pretrained": run(mean_pre), "from_scratch": run(mean_scratch)}}


def test_format_table():
    table = format_table(_fake_result(0.5, 0.25))
    assert "| caudate | 0.500 | 0.250 | 4.0 | 4.0 |" in table and "| putamen | – | – | – | – |" in table
    assert "**0.500**" in table and "DEMONSTRATION" in table


def test_seed_statistics_against_hand_computed_values():
    results = [_fake_result(0.6, 0.2, 0), _fake_result(0.4, 0.3, 1), _fake_result(0.2, 0.25, 2)]
    summary = summarise_seeds(results)
    row = summary["classes"]["mean"]
    assert row["pretrained"]["mean"] == pytest.approx(0.4) and row["pretrained"]["sd"] == pytest.approx(0.2)  # ddof 1
    assert row["difference"]["mean"] == pytest.approx((0.4 + 0.1 - 0.05) / 3)
    assert row["difference"]["sd"] == pytest.approx(np.std([0.4, 0.1, -0.05], ddof=1))
    assert (row["pretrained_wins"], row["n"]) == (2, 3)
    assert summary["classes"]["putamen"]["n"] == 0  # absent everywhere: no paired difference
    table = format_seeds_table(summary)
    assert "| **mean** | 0.400 ± 0.200 | 0.250 ± 0.050 | 0.150 ± 0.229 | 2/3 |" in table


def test_demo_figures_have_legends_and_labelled_axes(tmp_path):
    from uniseg_hub.demo.figures import comparison_preview, learning_curves

    img = np.random.default_rng(0).random((20, 24, 22)).astype(np.float32)
    lab = np.zeros((20, 24, 22), np.int64)
    lab[5:12, 6:14, 4:10], lab[12:16, 14:20, 12:18] = 1, 2
    p = comparison_preview(tmp_path / "p.png", img, {"reference": lab, "pretrained": lab, "from scratch": 0 * lab},
                           ["caudate", "putamen"], spacing=(3, 3, 3))
    hist = [[{"epoch": e, "train_loss": 1 / e + s, "val_mean_dice": 0.1 * e} for e in (1, 2, 3)] for s in (0.0, 0.1)]
    c = learning_curves(tmp_path / "c.png", {"pretrained": hist, "from_scratch": hist[:1]}, resumed_at={"pretrained": [1]})
    for f in (p, c):
        with Image.open(f) as im:
            rgb = np.asarray(im.convert("RGB"))
        assert im.format == "PNG" and im.size[0] > 500
        red = ((rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum()  # tab:red (class 1 / scratch)
        assert red > 50


def test_run_demo_tiny_budget_nilearn_only(tmp_path):
    res = run_demo(tmp_path, budget=DemoBudget(epochs=1, iterations=2, batch_size=1, val_every=1), mricron=None, spacing=6.0)
    assert res["task"] == "tissue" and "fallback" in res["note"] and res["classes"] == ["grey matter", "white matter"]
    assert "DEMONSTRATION" in res["disclaimer"]
    for run in res["runs"].values():
        assert all(0 <= v <= 1 for v in run["dice"].values() if not math.isnan(v))
        assert run["validation"].startswith("UniSegPredictor on the raw files")
    assert "matched" in res["load_report"] and "random init" in res["load_report"]
    for f in res["files"]:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size[0] > 100
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["runs"]["pretrained"]["mean_dice"] == pytest.approx(res["runs"]["pretrained"]["mean_dice"], nan_ok=True)
    assert (tmp_path / "pretrained" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "from_scratch" / "log.json").is_file()
    again = run_demo(tmp_path, budget=DemoBudget(epochs=1, iterations=2, batch_size=1, val_every=1), mricron=None,
                     spacing=6.0, figures=False)  # same seed: the same numbers (and the earlier demo is replaced)
    for name in ("pretrained", "from_scratch"):
        assert again["runs"][name]["dice"] == res["runs"][name]["dice"]
        assert [h["train_loss"] for h in again["runs"][name]["history"]] == [h["train_loss"] for h in res["runs"][name]["history"]]


def test_readme_headline_is_the_committed_record():
    """README's demo table is the committed multi-seed record's table, line for line (N >= 5 seeds)."""
    record = json.loads(RECORD.read_text())
    assert len(record["summary"]["seeds"]) >= 5 and record["budget"] == asdict(DemoBudget())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = format_seeds_table(record["summary"])
    assert table in readme, table


@pytest.mark.slow
def test_full_demo_reproduces_the_committed_record(tmp_path, capsys):
    """``make demo`` (seed 0) prints the numbers of seed 0 in the committed multi-seed record, digit for digit."""
    assert main(["-o", str(tmp_path), "--no-install"]) == 0
    out = capsys.readouterr().out
    assert "| **mean** |" in out and "Dice pretrained" in out and str(RECORD) in out
    res = json.loads((tmp_path / "demo_results.json").read_text())
    assert res["total_time_s"] < 600
    record = json.loads(RECORD.read_text())
    seed0 = next(r for r in record["per_seed"] if r["seed"] == 0)
    assert res["budget"] == record["budget"] and res["threads"] == record["threads"]
    for name in ("pretrained", "from_scratch"):
        assert f"{res['runs'][name]['mean_dice']:.3f}" == f"{seed0['runs'][name]['mean_dice']:.3f}"
        for cls, value in seed0["runs"][name]["dice"].items():
            assert f"{res['runs'][name]['dice'][cls]:.3f}" == f"{value:.3f}", (name, cls)
