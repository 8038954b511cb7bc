"""End to end: files in, NIfTI out. Official ``nnUNet_predict`` outputs (e2e fixtures), task ``all``, a real
scan (nilearn's MNI152 T1) through the CLI with a PNG preview, and the CLI's one-line errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from uniseg_hub.cli import main
from uniseg_hub.inference import UniSegPredictor, combined_label_offsets, sliding_window_inference
from uniseg_hub.preprocessing import load_image, preprocess, restore_labels

from .conftest import REF, TINY_MODEL, max_abs

E2E = REF / "e2e"
CASES = json.loads((E2E / "e2e_cases.json").read_text())["cases"]


def _mni_path() -> Path:
    spec = importlib.util.find_spec("nilearn")  # locate the package without importing it
    assert spec is not None and spec.submodule_search_locations, "nilearn (bundled MNI152 data) is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


@pytest.fixture(scope="module")
def e2e_arrays() -> dict[str, np.ndarray]:
    with np.load(E2E / "e2e_arrays.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_official_nnunet_predict_outputs(case, e2e_arrays, tiny_model, tmp_path):
    name, spacing = case["name"], [float(s) for s in case["spacing_arg"].split(",")]
    # the network's probabilities on the official preprocessed input
    probs = sliding_window_inference(
        torch.from_numpy(e2e_arrays[f"{name}/preprocessed"]), tiny_model.config.patch_size, 4, tiny_model,
        task_id=case["task_id"], mirror_axes=(0, 1, 2) if case["test_time_mirroring"] else (),
    )
    assert max_abs(probs, e2e_arrays[f"{name}/probabilities"]) <= 1e-4
    # the whole pipeline: files in, the written file equals the official *_pred.nii.gz
    predictor = UniSegPredictor(tiny_model, spacing=spacing, mirror=case["test_time_mirroring"], sw_batch_size=4)
    out = tmp_path / "pred.nii.gz"
    result = predictor.predict_file([E2E / f for f in case["inputs"]], out, task=case["task_id"])
    ours, ref = nib.load(str(out)), nib.load(str(E2E / case["output"]))
    assert ours.shape == ref.shape and ours.get_data_dtype() == np.uint8
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-5)
    differing = int((np.asarray(ours.dataobj) != np.asarray(ref.dataobj)).sum())
    assert differing == 0  # measured: 0 voxels differ on both cases (no ties needed)
    np.testing.assert_array_equal(result.labels, e2e_arrays[f"{name}/segmentation"])


def test_task_all_merges_ct_tasks(tiny_model):
    case = CASES[0]  # ct_t0: one CT channel -> the 8 CT tasks
    spacing = [float(s) for s in case["spacing_arg"].split(",")]
    predictor = UniSegPredictor(tiny_model, spacing=spacing, mirror=False, sw_batch_size=4)
    image = load_image([E2E / f for f in case["inputs"]])
    result = predictor.predict(image, task="all")
    assert result.tasks == list(range(8))
    # independent merge with the official couple_id table: later tasks overwrite, labels beyond a task's classes ignored
    couple = [[1, 2], [3, 4], [5, 6], [7, 8], [9], [10], [11], [12]]
    pre = preprocess(image, ["CT"], tiny_model.config.preprocessing, spacing=spacing)
    merged = torch.zeros(pre.data.shape[1:], dtype=torch.long)
    for tid, labels in enumerate(couple):
        arg = predictor.predict_preprocessed(pre.data, tid).argmax(0)
        for soft_index, label in enumerate(labels, start=1):
            merged[arg == soft_index] = label
    onehot = torch.stack([(merged == v).float() for v in range(18)])  # the official 18-channel one-hot export
    expected, _ = restore_labels(onehot, pre)
    np.testing.assert_array_equal(result.labels, expected)
    assert set(np.unique(result.labels)) <= set(range(13)) and len(np.unique(result.labels)) > 1
    assert combined_label_offsets(tiny_model.config)[7] == 12


def test_mni152_cli_nifti_and_preview(tmp_path, monkeypatch):
    mni = _mni_path()
    out, png = tmp_path / "mni_seg.nii.gz", tmp_path / "preview.png"
    argv = ["predict", "-i", str(mni), "-o", str(out), "--weights", str(TINY_MODEL), "--task", "prostate",
            "--spacing", "6,6,6", "--no-mirror", "--device", "cpu", "--preview", str(png), "--save-probabilities"]
    assert main(argv) == 0
    src, seg = nib.load(str(mni)), nib.load(str(out))
    assert seg.shape == src.shape and np.array_equal(seg.affine, src.affine)
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    probs = np.load(tmp_path / "mni_seg.npz")["prostate"]
    assert probs.shape == (2, *src.shape)
    differ = labels != probs.argmax(0)  # float16 storage: only near-ties may flip
    assert differ.mean() < 1e-3 and np.all(np.abs(probs[1] - probs[0]).astype(np.float32)[differ] <= 2e-3)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] == 256 and img.shape[1] > 3 * 150
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # a real picture, not blank


_HAS_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.parametrize("speed", [["--optimize"], ["--compile"]], ids=["optimize", "compile"])
def test_cli_speed_options_write_the_official_segmentation(speed, tmp_path):
    """``--optimize`` / ``--compile`` (one graph, inductor freezing) change speed, not the result: the written
    file still equals the official nnUNet_predict output voxel for voxel (case ct_t0: 8-fold mirroring)."""
    if "--compile" in speed and not _HAS_CXX:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    case = CASES[0]
    out = tmp_path / "pred.nii.gz"
    argv = ["predict", "-i", *[str(E2E / f) for f in case["inputs"]], "-o", str(out), "--weights", str(TINY_MODEL),
            "--task", str(case["task_id"]), "--spacing", case["spacing_arg"], "--device", "cpu", *speed]
    assert main(argv) == 0
    ours, ref = nib.load(str(out)), nib.load(str(E2E / case["output"]))
    assert int((np.asarray(ours.dataobj) != np.asarray(ref.dataobj)).sum()) == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["-i", "missing.nii.gz", "--task", "0"], "input image not found"),
        (["-i", "{txt}", "--task", "0"], "not a NIfTI file or a DICOM series folder"),
        (["-i", "{ct}", "--task", "livr"], "unknown task 'livr'"),
        (["-i", "{ct}", "--task", "whole_body_tumor"], "takes 2 input file(s) (CT, PET), got 1"),
        (["-i", "{ct}", "--task", "0", "--memory-limit-gb", "0.00001"], "more than the limit of"),
        (["-i", "{ct}", "--task", "0", "--mirror-axes", "W"], "--mirror-axes must be axes among 0,1,2"),
        (["-i", "{ct}", "--task", "0", "--mirror-axes", "3"], "mirror_axes must be spatial axes among (0, 1, 2)"),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path, capsys):
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    fmt = {"txt": str(txt), "ct": str(E2E / "ct_t0_0000.nii.gz")}
    argv = ["predict", *[a.format(**fmt) for a in args], "-o", str(tmp_path / "o.nii.gz"), "--weights", str(TINY_MODEL),
            "--no-mirror", "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("uniseg-hub predict: error:") and len(err.splitlines()) == 1
