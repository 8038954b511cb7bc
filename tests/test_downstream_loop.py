"""The downstream loop closes: ``finetune`` (CLI) → run folder → ``predict`` / ``from_pretrained`` / ``info`` on it,
on a real scan (Colin27 + AAL deep grey matter, written as an nnU-Net raw data set with non-consecutive label
values), for every transfer strategy; and two runs with one seed are identical bit for bit.

The independent truth: a numpy Dice of the NIfTI that ``uniseg-hub predict --weights RUN`` writes, against the
raw label file on its own grid, must equal ``result.json``'s validation Dice (the final validation runs the same
predictor with its default settings on the raw validation files).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from uniseg_hub import from_pretrained
from uniseg_hub.cli import main
from uniseg_hub.data import nnunet_raw_cases
from uniseg_hub.demo.data import mricron_dir, write_task_dataset
from uniseg_hub.preprocessing import nnunet_raw_task, plan_dataset

from .conftest import TINY_MODEL

VALUES = {1: 1, 2: 3, 3: 5, 4: 7}  # demo classes caudate, putamen, pallidum, thalamus → label values 1, 3, 5, 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Colin27 deep grey matter at 4 mm: case ``deep_grey_left`` trains, ``deep_grey_right`` validates."""
    assert mricron_dir() is not None, "Debian mricron-data is needed (make test installs it)"
    root = tmp_path_factory.mktemp("raw")
    write_task_dataset("deep_grey", root, spacing=4.0)
    folder = root / "deep_grey"
    for f in (folder / "labelsTr").iterdir():
        img = nib.load(f)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        out = np.zeros_like(lab)
        for c, v in VALUES.items():
            out[lab == c] = v
        nib.save(nib.Nifti1Image(out, img.affine, img.header), f)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "caudate", "3": "putamen", "5": "pallidum", "7": "thalamus"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def _finetune(dataset: Path, out: Path, strategy: str, *extra: str) -> dict:
    code = main(["finetune", "--weights", str(TINY_MODEL), "--data", str(dataset), "-o", str(out), "--strategy", strategy,
                 "--epochs", "2", "--iterations", "2", "--batch-size", "2", "--patch-size", "32,64,64", "--seed", "5",
                 "--device", "cpu", "--no-progress", *extra])
    assert code == 0
    return json.loads((out / "result.json").read_text())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) if (a.sum() + b.sum()) else float("nan")


@pytest.mark.parametrize("strategy", ["official", "keep-prompt", "prompt-tuning"])
def test_finetune_then_predict_round_trip(dataset, tmp_path, strategy, capsys):
    out = tmp_path / "run"
    result = _finetune(dataset, out, strategy)
    assert result["validation"].startswith("UniSegPredictor on the raw files")
    assert set(result["dice"]) == {"caudate", "putamen", "pallidum", "thalamus"}
    assert {"final", "checkpoint_latest.pt", "log.json", "curves.png"} <= {p.name for p in out.iterdir()}

    # the run folder is a model: class names, label values, modalities and the data set's plan travel with it
    model = from_pretrained(out)
    task = model.config.task_spec(model.config.default_task)
    assert task.name == "deep_grey" and task.labels == {"1": "caudate", "3": "putamen", "5": "pallidum", "7": "thalamus"}
    assert task.modalities == ["MR"]
    raw = nnunet_raw_cases(dataset)
    assert model.config.preprocessing == plan_dataset(raw[:1], ["MR"], source=model.config.preprocessing.source)
    assert model.config.provenance["transfer"]["strategy"] == strategy
    assert model.config.provenance["finetuned"]["validation"]["mean_dice"] == pytest.approx(result["mean_dice"], nan_ok=True)
    card = (out / "final" / "README.md").read_text()
    assert "### Fine-tuning" in card and "deep_grey" in card and strategy in card

    # predict with no --task (backbone: its only task; prompt models: the new task is the default)
    seg = tmp_path / "seg.nii.gz"
    assert main(["predict", "--weights", str(out), "-i", str(raw[1].images[0]), "-o", str(seg), "--no-mirror"]) == 0
    assert main(["predict", "--weights", str(out), "-i", str(raw[1].images[0]), "-o", str(seg), "--overwrite"]) == 0  # defaults, as validation
    pred = np.asarray(nib.load(seg).dataobj)
    ref = np.asarray(nib.load(raw[1].label).dataobj)
    assert pred.shape == ref.shape and set(np.unique(pred)) <= {0, 1, 3, 5, 7}  # the data set's label values
    measured = []
    for value, name in task.labels.items():
        expected = _dice(pred == int(value), ref == int(value))
        measured.append(f"{name} {expected:.6f} vs {result['dice'][name]:.6f}")
        assert result["dice"][name] == pytest.approx(expected, abs=1e-3, nan_ok=True), name

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "deep_grey" in text and "fine-tuned:" in text and f"transfer:    {strategy}" in text
    with capsys.disabled():  # shown with -s: Dice from the written NIfTI vs result.json
        print(f"\n{strategy}: " + "; ".join(measured))


def test_backbone_refuses_a_task_and_prompt_model_needs_one(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    _finetune(dataset, out, "official")
    raw = nnunet_raw_cases(dataset)
    code = main(["predict", "--weights", str(out), "-i", str(raw[1].images[0]), "-o", str(tmp_path / "s.nii.gz"), "--task", "0"])
    assert code == 1 and "prompt-free backbone" in capsys.readouterr().err
    code = main(["predict", "--weights", str(TINY_MODEL), "-i", str(raw[1].images[0]), "-o", str(tmp_path / "s.nii.gz")])
    assert code == 1 and "no default task" in capsys.readouterr().err


def test_finetune_into_an_earlier_run_is_refused(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    _finetune(dataset, out, "official")
    code = main(["finetune", "--weights", str(TINY_MODEL), "--data", str(dataset), "-o", str(out), "--epochs", "1",
                 "--iterations", "1", "--patch-size", "32,64,64", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "holds a fine-tuning run after 2 epoch(s)" in err and "--resume" in err


def test_same_seed_same_run_bit_for_bit(dataset, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _finetune(dataset, a, "official")
    _finetune(dataset, b, "official")
    la, lb = (json.loads((d / "log.json").read_text())["history"] for d in (a, b))
    assert [h["train_loss"] for h in la] == [h["train_loss"] for h in lb]
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a different seed draws other heads, patches and augmentations
    c = tmp_path / "c"
    main(["finetune", "--weights", str(TINY_MODEL), "--data", str(dataset), "-o", str(c), "--epochs", "2", "--iterations",
          "2", "--batch-size", "2", "--patch-size", "32,64,64", "--seed", "6", "--device", "cpu", "--no-progress"])
    lc = json.loads((c / "log.json").read_text())["history"]
    assert [h["train_loss"] for h in lc] != [h["train_loss"] for h in la]


def test_nnunet_raw_task_reads_label_values(dataset):
    task = nnunet_raw_task(dataset)
    assert task.label_values == [0, 1, 3, 5, 7] and task.class_names == ["caudate", "putamen", "pallidum", "thalamus"]
