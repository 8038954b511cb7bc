"""Every kind of bad input gets one clear error; nothing goes through silently, nothing is a traceback.

Each row of :data:`CLI_KINDS` runs ``uniseg-hub`` (in process, through the real ``main``) on one bad input and
asserts exit code 1, exactly one stderr line ``uniseg-hub <command>: error: ...`` that contains the expected words
(what was expected and what was found), and — where the command writes — that nothing was written. Each row of
:data:`API_KINDS` does the same for the Python API (one exception of the documented type with the expected words).
:data:`ACCEPTED` lists inputs that look odd but are right to accept (they must work).

``UNISEG_KINDS_REPORT=path.md pytest tests/test_bad_inputs.py`` also writes the table of kinds and messages.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from uniseg_hub import UniSeg, UniSegConfig, from_pretrained
from uniseg_hub.cli import main
from uniseg_hub.training import TrainConfig

from .conftest import REF, TINY_MODEL

CT = REF / "e2e" / "ct_t0_0000.nii.gz"
REPORT: list[tuple[str, str, str, str]] = []  # (kind, interface, outcome, message)


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    path = os.environ.get("UNISEG_KINDS_REPORT")
    if path and REPORT:
        rows = ["| # | kind | interface | outcome | message |", "|---|---|---|---|---|"]
        rows += [f"| {i} | {k} | {w} | {o} | {m.replace('|', '/')} |" for i, (k, w, o, m) in enumerate(REPORT, 1)]
        Path(path).write_text("\n".join(rows) + "\n")


def _nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0), dtype=None) -> Path:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype or data.dtype), np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms[: data.ndim] if data.ndim <= 3 else (*zooms, 1.0))
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The bad (and good) files the rows refer to as ``{name}``."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    ct = np.asarray(nib.load(str(CT)).dataobj, dtype=np.float32)
    f: dict[str, Path] = {"ct": CT, "d": d}
    (d / "notes.txt").write_text("not an image")
    f["txt"] = d / "notes.txt"
    f["img2d"] = _nifti(d / "slice.nii.gz", ct[:, :, 0])
    f["img4d"] = _nifti(d / "two_volumes.nii.gz", np.stack([ct, ct], -1))
    nan = ct.copy()
    nan[0, 0, 0] = np.nan
    f["nan"] = _nifti(d / "nan.nii.gz", nan)
    f["zeros"] = _nifti(d / "zeros.nii.gz", np.zeros_like(ct))
    f["absurd_spacing"] = _nifti(d / "absurd_spacing.nii.gz", ct, zooms=(500.0, 1.5, 1.5))  # nibabel turns 0 into 1 itself
    f["huge_voxels"] = _nifti(d / "huge_voxels.nii.gz", ct, zooms=(60.0, 60.0, 60.0))
    f["other_shape"] = _nifti(d / "other_shape.nii.gz", ct[:-2])
    (d / "empty_dir").mkdir()
    f["empty_dir"] = d / "empty_dir"
    (d / "not_dicom").mkdir()
    for i in range(3):
        (d / "not_dicom" / f"slice{i}.dcm").write_bytes(rng.bytes(300))
    f["not_dicom"] = d / "not_dicom"
    f["existing_out"] = d / "existing.nii.gz"
    f["existing_out"].write_bytes(b"an earlier result")
    f["under_file"] = f["txt"] / "out.nii.gz"  # a folder that cannot exist: its parent is a file
    # weights: the tiny official network as a save_pretrained folder, and broken copies of it
    model = from_pretrained(str(TINY_MODEL))
    good = d / "weights"
    model.save_pretrained(good)
    f["weights"] = good
    shutil.copy(TINY_MODEL, d / "lonely.model")  # without its .model.pkl
    for name, edit in {
        "w_mismatch": lambda c: c.update(num_classes=c["num_classes"] + 3),
        "w_badtype": lambda c: c.update(patch_size="big"),
        "w_unknown_field": lambda c: c.update(colour="blue"),
    }.items():
        shutil.copytree(good, d / name)
        cfg = json.loads((d / name / "config.json").read_text())
        edit(cfg)
        (d / name / "config.json").write_text(json.dumps(cfg))
        f[name] = d / name
    shutil.copytree(good, d / "w_noweights")
    (d / "w_noweights" / "model.safetensors").unlink()
    f["w_noweights"] = d / "w_noweights"
    shutil.copytree(good, d / "w_truncated")
    blob = (good / "model.safetensors").read_bytes()
    (d / "w_truncated" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    f["w_truncated"] = d / "w_truncated"
    ckpt = d / "run" / "checkpoint_latest.pt"
    ckpt.parent.mkdir()
    torch.save({"model": {}}, ckpt)
    f["ckpt"] = ckpt
    (d / "unfinished_run" / "best").mkdir(parents=True)
    shutil.copytree(good, d / "unfinished_run" / "best", dirs_exist_ok=True)
    (d / "unfinished_run" / "checkpoint_latest.pt").write_bytes(b"x")
    f["unfinished_run"] = d / "unfinished_run"
    # an nnU-Net raw data set (3 cases) and broken variants of it
    f["raw"] = _raw_dataset(d / "raw", rng)
    for name, case_edit in {
        "raw_neg_label": lambda lab: np.where(lab == 1, -1, lab),
        "raw_float_label": lambda lab: lab.astype(np.float32) * 0.5,
        "raw_unknown_label": lambda lab: np.where(lab == 1, 9, lab),
        "raw_label_grid": lambda lab: lab[:-1],
    }.items():
        f[name] = _raw_dataset(d / name, rng, case_edit=case_edit)
    f["raw_nan_image"] = _raw_dataset(d / "raw_nan_image", rng, nan_image=True)
    f["raw_no_json"] = _raw_dataset(d / "raw_no_json", rng)
    (f["raw_no_json"] / "dataset.json").unlink()
    f["raw_one_case"] = _raw_dataset(d / "raw_one_case", rng, cases=1)
    (d / "used_run").mkdir()
    (d / "used_run" / "log.csv").write_text("epoch,loss\n0,1.0\n")
    f["used_run"] = d / "used_run"
    return {k: str(v) for k, v in f.items()}


def _raw_dataset(root: Path, rng, cases: int = 3, case_edit=None, nan_image: bool = False) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"name": "blobs", "modality": {"0": "MR"},
                                                   "labels": {"0": "background", "1": "blob"}}))
    z, y, x = np.mgrid[:24, :24, :24]
    for i in range(cases):
        lab = (((z - 12) ** 2 + (y - 12) ** 2 + (x - 10 - i) ** 2) < 30).astype(np.int16)
        img = (rng.normal(100, 10, lab.shape) + 50 * lab).astype(np.float32)
        if nan_image and i == 1:
            img[3, 3, 3] = np.nan
        if case_edit is not None and i == 1:
            lab = case_edit(lab)
        _nifti(root / "imagesTr" / f"case{i}_0000.nii.gz", img)
        _nifti(root / "labelsTr" / f"case{i}.nii.gz", lab)
    return root


PREDICT = ["predict", "--weights", "{weights}", "--task", "0", "--no-mirror", "--device", "cpu"]
OUT = ["-o", "{d}/out.nii.gz"]

#: (kind, argv, words the one-line message must contain). ``{name}`` = a path from the ``files`` fixture.
CLI_KINDS: list[tuple[str, list[str], list[str]]] = [
    # --- predict: the input scan
    ("input file missing", [*PREDICT, "-i", "{d}/missing.nii.gz", *OUT], ["input image not found", "missing.nii.gz"]),
    ("input is a text file", [*PREDICT, "-i", "{txt}", *OUT], ["not a NIfTI file or a DICOM series folder"]),
    ("input is a 2D image", [*PREDICT, "-i", "{img2d}", *OUT], ["expected a 3D volume", "shape"]),
    ("input is 4D (two volumes)", [*PREDICT, "-i", "{img4d}", *OUT], ["expected a 3D volume", "shape"]),
    ("input holds NaN", [*PREDICT, "-i", "{nan}", *OUT], ["1 NaN/inf voxel", "expected finite intensities"]),
    ("input is all zeros", [*PREDICT, "-i", "{zeros}", *OUT], ["is constant (every voxel is 0)", "cannot be segmented"]),
    ("header spacing 500 mm", [*PREDICT, "-i", "{absurd_spacing}", *OUT], ["spacing of", "between 0.001 and 100 mm", "500"]),
    ("60 mm voxels (huge upsampling)", [*PREDICT, "-i", "{huge_voxels}", *OUT], ["resampling", "GiB", "more than the limit"]),
    ("empty folder as DICOM input", [*PREDICT, "-i", "{empty_dir}", *OUT], ["is an empty folder", "DICOM"]),
    ("folder without DICOM files", [*PREDICT, "-i", "{not_dicom}", *OUT], ["holds 3 file(s)", "no DICOM file"]),
    ("channels of different shapes", ["predict", "--weights", "{weights}", "--task", "whole_body_tumor", "--no-mirror",
                                      "-i", "{ct}", "{other_shape}", *OUT], ["has shape", "same voxel grid"]),
    ("too few channels for the task", ["predict", "--weights", "{weights}", "--task", "whole_body_tumor", "-i", "{ct}",
                                       *OUT], ["takes 2 input file(s) (CT, PET), got 1"]),
    ("unknown task name", ["predict", "--weights", "{weights}", "--task", "lungs", "-i", "{ct}", *OUT], ["unknown task 'lungs'", "known tasks"]),
    ("task id out of range", ["predict", "--weights", "{weights}", "--task", "99", "-i", "{ct}", *OUT], ["task id 99", "0..10"]),
    ("negative task id", ["predict", "--weights", "{weights}", "--task", "-1", "-i", "{ct}", *OUT], ["task id -1", "out of range"]),
    # --- predict: numeric options
    ("--spacing 0,0,0", [*PREDICT, "-i", "{ct}", *OUT, "--spacing", "0,0,0"], ["--spacing", "between 0.001 and 100 mm"]),
    ("--spacing negative", [*PREDICT, "-i", "{ct}", *OUT, "--spacing=-3,1.5,1.5"], ["--spacing", "between 0.001 and 100 mm"]),
    ("--spacing nan", [*PREDICT, "-i", "{ct}", *OUT, "--spacing", "nan,1,1"], ["--spacing", "finite"]),
    ("--spacing not numbers", [*PREDICT, "-i", "{ct}", *OUT, "--spacing", "a,b,c"], ["--spacing must be three numbers"]),
    ("--spacing two numbers", [*PREDICT, "-i", "{ct}", *OUT, "--spacing", "1,2"], ["--spacing must be three numbers"]),
    ("--step 0", [*PREDICT, "-i", "{ct}", *OUT, "--step", "0"], ["--step must be in (0, 1]"]),
    ("--step 1.5", [*PREDICT, "-i", "{ct}", *OUT, "--step", "1.5"], ["--step must be in (0, 1]"]),
    ("--step nan", [*PREDICT, "-i", "{ct}", *OUT, "--step", "nan"], ["--step must be in (0, 1]"]),
    ("--sw-batch-size 0", [*PREDICT, "-i", "{ct}", *OUT, "--sw-batch-size", "0"], ["--sw-batch-size", "integer >= 1"]),
    ("--memory-limit-gb 0", [*PREDICT, "-i", "{ct}", *OUT, "--memory-limit-gb", "0"], ["--memory-limit-gb", "> 0"]),
    ("--memory-limit-gb nan", [*PREDICT, "-i", "{ct}", *OUT, "--memory-limit-gb", "nan"], ["--memory-limit-gb", "finite"]),
    ("--memory-limit-gb too small", [*PREDICT, "-i", "{ct}", *OUT, "--memory-limit-gb", "0.00001"], ["GiB", "more than the limit"]),
    ("--mirror-axes letters", [*PREDICT, "-i", "{ct}", *OUT, "--mirror-axes", "W"], ["--mirror-axes must be axes among 0,1,2"]),
    ("--mirror-axes 3", [*PREDICT, "-i", "{ct}", *OUT, "--mirror-axes", "3"], ["mirror_axes must be spatial axes"]),
    ("--device cuda without a GPU", [*PREDICT[:-2], "--device", "cuda", "-i", "{ct}", *OUT], ["no CUDA device is available", "--device cpu"]),
    ("--device name unknown", [*PREDICT[:-2], "--device", "tpu9", "-i", "{ct}", *OUT], ["device 'tpu9'", "expected cpu, cuda"]),
    # --- predict: outputs
    ("output exists (no --overwrite)", [*PREDICT, "-i", "{ct}", "-o", "{existing_out}"], ["already exists", "--overwrite"]),
    ("output suffix not NIfTI", [*PREDICT, "-i", "{ct}", "-o", "{d}/out.png"], ["must be a .nii or .nii.gz path"]),
    ("output folder cannot be created", [*PREDICT, "-i", "{ct}", "-o", "{under_file}"], ["cannot write output", "out.nii.gz"]),
    ("output is a folder", [*PREDICT, "-i", "{ct}", "-o", "{empty_dir}"], ["is a folder", "expected a file path"]),
    ("--preview exists (no --overwrite)", [*PREDICT, "-i", "{ct}", *OUT, "--preview", "{txt}"], ["already exists", "--overwrite"]),
    # --- predict / info: the weights
    ("weights name unknown", [*PREDICT[:1], "--weights", "no-such-weights", "-i", "{ct}", *OUT], ["no-such-weights"]),
    ("weights: a training checkpoint file", [*PREDICT[:1], "--weights", "{ckpt}", "-i", "{ct}", *OUT], ["is a training checkpoint", "run/final"]),
    ("weights: unfinished run folder", [*PREDICT[:1], "--weights", "{unfinished_run}", "-i", "{ct}", *OUT], ["has not fin", "unfinished_run/best", "--resume"]),
    ("weights: config disagrees with weights", [*PREDICT[:1], "--weights", "{w_mismatch}", "-i", "{ct}", *OUT], ["shape mismatch", "decoder.heads"]),
    ("weights: wrong type in config.json", [*PREDICT[:1], "--weights", "{w_badtype}", "-i", "{ct}", *OUT], ["patch_size", "big"]),
    ("weights: unknown field in config.json", [*PREDICT[:1], "--weights", "{w_unknown_field}", "-i", "{ct}", *OUT], ["colour"]),
    ("weights: folder without model.safetensors", [*PREDICT[:1], "--weights", "{w_noweights}", "-i", "{ct}", *OUT], ["model.safetensors"]),
    ("weights: truncated model.safetensors", [*PREDICT[:1], "--weights", "{w_truncated}", "-i", "{ct}", *OUT], ["model.safetensors"]),
    ("info: config disagrees with weights", ["info", "{w_mismatch}"], ["shape mismatch", "decoder.heads"]),
    ("info: no path", ["info"], ["expected PATH"]),
    ("info: .model without its .pkl", ["info", "{d}/lonely.model"], ["lonely.model"]),
    ("convert: checkpoint missing", ["convert", "{d}/missing.model", "{d}/converted"], ["missing.model"]),
    # --- finetune: the data set
    ("finetune: data folder missing", ["finetune", "--weights", str(TINY_MODEL), "--data", "{d}/nowhere", "-o", "{d}/run_a"], ["dataset.json", "nowhere"]),
    ("finetune: no dataset.json", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw_no_json}", "-o", "{d}/run_b"], ["no dataset.json"]),
    ("finetune: one case only", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw_one_case}", "-o", "{d}/run_c"], ["at least 2 cases", "found 1"]),
    ("finetune: label -1 in one case", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw_neg_label}", "-o", "{d}/run_d"], ["case1", "-1"]),
    ("finetune: float labels (0.5)", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw_float_label}", "-o", "{d}/run_e"], ["case1", "non-integer", "0.5"]),
    ("finetune: unknown label value 9", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw_unknown_label}", "-o", "{d}/run_f"], ["case1", "[9]", "not labels of task"]),
    ("finetune: label grid differs", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw_label_grid}", "-o", "{d}/run_g"], ["case1", "has shape", "voxel grid"]),
    ("finetune: NaN in a training image", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw_nan_image}", "-o", "{d}/run_h"], ["case1_0000", "NaN/inf"]),
    # --- finetune: options and the run folder
    ("finetune: --epochs 0", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{d}/run_i", "--epochs", "0"], ["epochs", ">= 1"]),
    ("finetune: --lr -1", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{d}/run_j", "--lr", "-1"], ["lr", "> 0"]),
    ("finetune: --lr nan", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{d}/run_k", "--lr", "nan"], ["lr", "finite"]),
    ("finetune: --patch-size 1,2", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{d}/run_l", "--patch-size", "1,2"], ["--patch-size must be three integers"]),
    ("finetune: --val-fraction 1.5", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{d}/run_m", "--val-fraction", "1.5"], ["--val-fraction must be in (0, 1)"]),
    ("finetune: --config file missing", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{d}/run_n", "--config", "{d}/nope.json"], ["nope.json"]),
    ("finetune: used run folder (no --resume)", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{used_run}", "--epochs", "1"], ["used_run", "--resume", "--overwrite"]),
    ("finetune: --device cuda without a GPU", ["finetune", "--weights", str(TINY_MODEL), "--data", "{raw}", "-o", "{d}/run_o", "--device", "cuda"], ["no CUDA device is available"]),
    # --- export
    ("export: unknown task", ["export", "onnx", "{weights}", "{d}/x.onnx", "--task", "lungs"], ["unknown task 'lungs'"]),
    ("export: channel count without a stem", ["export", "onnx", "{weights}", "{d}/x.onnx", "--channels", "3"], ["3"]),
]


@pytest.mark.parametrize("kind,argv,words", CLI_KINDS, ids=[k[0] for k in CLI_KINDS])
def test_cli_bad_input_is_one_clear_line(kind, argv, words, files, capsys):
    argv = [a.format(**files) for a in argv]
    before = sorted(p.name for p in Path(files["d"]).iterdir())
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    REPORT.append((kind, f"`uniseg-hub {argv[0]}`", f"exit {rc}", err.split("error: ", 1)[-1]))
    assert rc == 1, (kind, err)
    assert len(err.splitlines()) == 1 and err.startswith(f"uniseg-hub {argv[0]}: error: "), err
    assert "Traceback" not in err and "unexpected" not in err, err
    for w in words:
        assert w in err, (kind, w, err)
    assert not Path(files["d"], "out.nii.gz").exists(), "a refused prediction wrote its output"
    new = set(p.name for p in Path(files["d"]).iterdir()) - set(before)
    assert not {n for n in new if n.startswith("run_")} - {"run_a"}, f"a refused fine-tune created {new}"


def _tiny_uniseg() -> UniSeg:
    return from_pretrained(str(TINY_MODEL))


#: (kind, call, exception type, words)
API_KINDS = [
    ("forward: task=None", lambda m: m(torch.zeros(1, 1, 32, 64, 64), None), ValueError, ["needs a task", "liver"]),
    ("forward: unknown task name", lambda m: m(torch.zeros(1, 1, 32, 64, 64), "lungs"), ValueError, ["unknown task 'lungs'"]),
    ("forward: NaN in the input", lambda m: m(torch.full((1, 1, 32, 64, 64), float("nan")), 0), ValueError, ["non-finite", "NaN"]),
    ("forward: 4-D input", lambda m: m(torch.zeros(1, 32, 64, 64), 0), ValueError, ["5-D", "x[None]"]),
    ("forward: 3 channels", lambda m: m(torch.zeros(1, 3, 32, 64, 64), 0), ValueError, ["has 3 channels", "(1, 3, 32, 64, 64)"]),
    ("forward: integer tensor", lambda m: m(torch.zeros(1, 1, 32, 64, 64, dtype=torch.long), 0), TypeError, ["floating-point", "x.float()"]),
    ("forward: float task ids", lambda m: m(torch.zeros(1, 1, 32, 64, 64), torch.tensor([0.5])), TypeError, ["task_id must hold integers"]),
    ("forward: wrong patch size", lambda m: m(torch.zeros(1, 1, 32, 64, 32), 0), ValueError, ["exactly (32, 64, 64)", "sliding window"]),
    ("forward: task ids for another batch size", lambda m: m(torch.zeros(2, 1, 32, 64, 64), [0, 1, 2]), ValueError, ["3 entries for a batch of 2"]),
    ("TrainConfig(epochs=2.5)", lambda m: TrainConfig(epochs=2.5), ValueError, ["TrainConfig.epochs", "integer", "2.5"]),
    ("TrainConfig(lr='0.01')", lambda m: TrainConfig(lr="0.01"), ValueError, ["TrainConfig.lr"]),
    ("UniSegConfig(patch_size='big')", lambda m: UniSegConfig(patch_size="big"), ValueError, ["patch_size"]),
    ("UniSegConfig.from_dict unknown field", lambda m: UniSegConfig.from_dict({**UniSegConfig().to_dict(), "colour": 1}), ValueError, ["colour"]),
    ("predictor: sw_batch_size=0", lambda m: __import__("uniseg_hub.inference", fromlist=["x"]).UniSegPredictor(m, sw_batch_size=0), ValueError, ["sw_batch_size", ">= 1"]),
    ("predictor: device='cuda:7'", lambda m: __import__("uniseg_hub.inference", fromlist=["x"]).UniSegPredictor(m, device="cuda:7"), ValueError, ["cuda:7"]),
    ("predictor: spacing=(0, 1, 1)", lambda m: __import__("uniseg_hub.inference", fromlist=["x"]).UniSegPredictor(m, spacing=(0, 1, 1)), ValueError, ["spacing", "between 0.001 and 100 mm"]),
]


@pytest.mark.parametrize("kind,call,exc,words", API_KINDS, ids=[k[0] for k in API_KINDS])
def test_python_api_bad_input_is_one_clear_error(kind, call, exc, words):
    model = _tiny_uniseg()
    with pytest.raises(exc) as info:
        call(model)
    msg = str(info.value)
    REPORT.append((kind, "Python API", type(info.value).__name__, msg))
    for w in words:
        assert w in msg, (kind, w, msg)


def test_accepted_task_name_in_forward_equals_the_id():
    """A task name is accepted wherever a task id is (``from_pretrained``'s docstring shows ``model(x, task_id="liver")``)."""
    model = _tiny_uniseg()
    x = torch.randn(1, 1, 32, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        by_name, by_id = model(x, "liver"), model(x, 0)
        mixed, mixed_ids = model(torch.cat([x, x]), ["liver", 1]), model(torch.cat([x, x]), [0, 1])
    assert torch.equal(by_name, by_id) and torch.equal(mixed, mixed_ids)
    REPORT.append(("forward: task name 'liver'", "Python API", "accepted (= task id 0)", "—"))


def test_accepted_overwrite_replaces_an_existing_output(files, tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"old")
    argv = [a.format(**files) for a in PREDICT] + ["-i", files["ct"], "-o", str(out), "--overwrite"]
    assert main(argv) == 0, capsys.readouterr().err
    assert nib.load(str(out)).shape == nib.load(files["ct"]).shape
    REPORT.append(("predict --overwrite over an existing output", "`uniseg-hub predict`", "accepted (replaced)", "—"))
