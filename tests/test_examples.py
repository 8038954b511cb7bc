"""Every script in ``examples/`` runs end to end on CPU (small settings, bundled real scans) and does what it says.

Each example exposes ``main(argv) -> dict``; the tests run it in-process and check its outputs against
independent truth: the official reference fixtures, the MNI152 tissue maps, the exact encoder output.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import REF

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))

pytestmark = pytest.mark.examples


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def mni_tissue() -> np.ndarray:
    """The reference tissue label map of the bundled MNI152 at 1 mm, NIfTI voxel order: 0 other, 1 GM, 2 WM."""
    bundled = load_example("_bundled")
    gm = np.asarray(nib.load(bundled.mni152_file("gm")).dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(bundled.mni152_file("wm")).dataobj, dtype=np.float32)
    return np.argmax(np.stack([np.clip(255 - gm - wm, 0, None), gm, wm]), axis=0)


def test_examples_are_the_documented_set():
    assert SCRIPTS == sorted(["convert_official_weights", "finetune_own_dataset", "monai_dynunet_inference",
                              "predict_scan", "prompt_tuning", "torch_hub_features", "use_in_monai"])


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_has_docstring_with_cpu_time_and_help(name, capsys):
    mod = load_example(name)
    doc = mod.__doc__ or ""
    assert "What it shows" in doc and "CPU time" in doc and "Run:" in doc, f"{name}: docstring incomplete"
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


def test_torch_hub_features():
    out = load_example("torch_hub_features").main([])
    x, feats, info, enc = out["input"], out["features"], out["feature_info"], out["encoder"]
    assert len(feats) == len(info) == enc.config.num_stages
    assert all(s % d == 0 for s, d in zip(x.shape[2:], enc.config.divisor))
    for f, i in zip(feats, info):
        assert f.shape[1] == i["num_chs"]
        assert list(f.shape[2:]) == [s // r for s, r in zip(x.shape[2:], i["reduction"])]
    assert enc.load_report.dropped and not enc.load_report.random_init
    import uniseg_hub  # an independent load path: the whole model's encoder

    with torch.no_grad():
        ref = uniseg_hub.from_pretrained("uniseg-demo").encoder(x)
    assert all(torch.equal(a, b) for a, b in zip(feats, ref))


def test_convert_official_weights(tmp_path, upstream_io):
    out = load_example("convert_official_weights").main(["--out", str(tmp_path / "conv")])
    folder = out["folder"]
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert "noncommercial" in (folder / "README.md").read_text().lower()
    assert out["identical"] == out["official_keys"] and len(out["identical"]) > 100
    model = out["model"]
    for case in ("c1_b1_t0", "c2_b1_t10"):  # logits of the official code on the same weights and inputs
        x = torch.from_numpy(upstream_io[f"{case}/input"])
        with torch.no_grad():
            y = model(x, task_id=torch.from_numpy(upstream_io[f"{case}/task_id"]))
        assert np.abs(y.numpy() - upstream_io[f"{case}/out"]).max() < 1e-4


def test_predict_scan(tmp_path, mni_tissue):
    out = load_example("predict_scan").main(["--out-dir", str(tmp_path)])
    bundled = load_example("_bundled")
    src = nib.load(bundled.mni152_file("t1"))
    pred_img = nib.load(out["nifti"])
    assert pred_img.shape == src.shape and np.allclose(pred_img.affine, src.affine)
    pred = np.asarray(pred_img.dataobj)
    assert set(np.unique(pred)) <= {0, 1, 2}
    # demo weights vs the template's own tissue maps (measured: grey 0.74, white 0.59 with weights/uniseg-demo)
    assert _dice(pred == 1, mni_tissue == 1) > 0.7
    assert _dice(pred == 2, mni_tissue == 2) > 0.5
    png = Image.open(out["png"])
    assert png.mode == "RGB" and png.height == 256 and png.width > 256
    rgb = np.asarray(png).astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 30).any(), "no coloured label overlay in the preview"


def test_use_in_monai(mni_tissue):
    mod = load_example("use_in_monai")
    out = mod.main([])
    model, image = out["model"], out["image"]
    assert [f.shape[1] for f in out["features"]] == [i["num_chs"] for i in model.encoder.feature_info]
    assert out["features"][0].shape[2:] == image.shape[2:]
    d_gm, d_wm = out["dice"]
    assert d_gm > 0.7 and d_wm > 0.5, out["dice"]
    # MONAI's sliding window over one window-sized volume must equal the encoder itself (axes permuted back)
    from monai.inferers import sliding_window_inference

    roi_xyz = list(model.config.patch_size)[::-1]
    x = image[..., : roi_xyz[0], : roi_xyz[1], : roi_xyz[2]].contiguous()
    with torch.no_grad():
        via_monai = sliding_window_inference(x, roi_xyz, 1, mod.MonaiAxes(model.encoder))
        direct = model.encoder(x.permute(0, 1, 4, 3, 2))
    for a, b in zip(via_monai, direct):
        assert torch.allclose(a, b.permute(0, 1, 4, 3, 2), atol=1e-5)


def test_finetune_own_dataset(tmp_path):
    out_dir = tmp_path / "ft"
    out = load_example("finetune_own_dataset").main(
        ["--out-dir", str(out_dir), "--epochs", "1", "--iterations", "2", "--val", "1", "--spacings", "3"])
    result, val, names = out["result"], out["val"], out["names"]
    assert names == ["cerebrospinal fluid", "grey matter", "white matter"]
    assert [c.name for c in val] == ["brain_3mm_right"]  # dataset.json order: right hemispheres validate
    assert len(result.history) == 1 and (out_dir / "checkpoint_latest.pt").is_file() and (out_dir / "log.csv").is_file()
    raw = out["data"]
    lab = np.asarray(nib.load(raw / "labelsTr" / "brain_3mm_right.nii.gz").dataobj)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    # the reported Dice equals an independent numpy Dice of the segmentation the run folder's model wrote
    seg = np.asarray(nib.load(out["segmentation"]).dataobj)
    assert seg.shape == lab.shape
    for c, n in enumerate(names, start=1):
        a, b = seg == c, lab == c
        expected = _dice(a, b) if (a.sum() + b.sum()) else float("nan")
        assert result.dice[n] == pytest.approx(expected, abs=1e-6, nan_ok=True), n


def test_prompt_tuning(tmp_path):
    out = load_example("prompt_tuning").main(["--out-dir", str(tmp_path), "--epochs", "1", "--iterations", "2"])
    model, before, changed = out["model"], out["before"], out["changed"]
    tid = model.config.default_task
    assert tid == 3 and model.config.tasks[tid].name == "csf_gm_wm"
    assert sorted(out["trainable"]) == sorted(
        [n for n, _ in model.named_parameters() if n.startswith("decoder.heads.")] + ["prompt.prompt_new"])
    assert changed and all(k.startswith("decoder.heads.") or k == "prompt.prompt" for k in changed), changed
    after = model.state_dict()
    assert torch.equal(after["prompt.prompt"][:, :tid], before["prompt.prompt"][:, :tid])  # old task maps frozen
    assert not torch.equal(after["prompt.prompt"][:, tid], before["prompt.prompt"][:, tid])  # the new one learned
    frozen = [k for k in after if not k.startswith(("decoder.heads.", "prompt.prompt"))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)


def test_example_runs_as_a_script(tmp_path):
    """The ``if __name__ == "__main__"`` path, in a fresh interpreter (the fastest example)."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "convert_official_weights.py"), str(REF / "tiny_upstream.model"),
                           "--out", str(tmp_path / "conv"), "--card-lines", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "115 of 115 official tensors identical" in proc.stdout
