"""The fine-tuning engine: recipe pieces against analytic truth, exact resume, a real-data fine-tune, the CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uniseg_hub import TaskSpec
from uniseg_hub.models.adapters import from_upstream
from uniseg_hub.data import Case
from uniseg_hub.training import (
    AugmentationConfig,
    DeepSupervisionLoss,
    PatchSampler,
    TrainConfig,
    deep_supervision_weights,
    evaluate,
    finetune,
    load_checkpoint,
    save_checkpoint,
    segmentation_metrics,
)

MNI = Path(nib.__file__).parents[1] / "nilearn" / "datasets" / "data"


def _sphere_case(name: str, shape=(36, 40, 40), centre=(18, 20, 20), radius=8, seed=0, task_id=None) -> Case:
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    label = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2).astype(np.int64)
    rng = np.random.default_rng(seed)
    image = (label + 0.3 * rng.standard_normal(shape)).astype(np.float32)[None]
    return Case(name, image, label, (1.0, 1.0, 1.0), task_id=task_id)


# ---- recipe pieces ----------------------------------------------------------------------------------------------
def test_deep_supervision_weights_match_official():
    # the official weights for 5 outputs (REFERENCE_README): 8/15, 4/15, 2/15, 1/15, 0
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_loss_is_low_for_perfect_logits_and_uses_every_scale():
    target = torch.zeros(1, 8, 16, 16, dtype=torch.long)
    target[:, 2:6, 4:12, 4:12] = 1
    perfect = F.one_hot(target, 2).permute(0, 4, 1, 2, 3).float() * 40 - 20
    loss = DeepSupervisionLoss()
    assert float(loss(perfect, target)) < 1e-3
    assert float(loss(-perfect, target)) > 1.0
    coarse = F.interpolate(perfect, scale_factor=0.5, mode="nearest")
    assert float(loss([perfect, coarse], target)) == pytest.approx(float(loss(perfect, target)), abs=1e-6)  # 2nd weight 0
    assert float(loss([perfect, -coarse, coarse], target)) > 0.3  # the middle scale counts (weight 1/3)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        loss(perfect, target + 1)


def test_metrics_against_analytic_values():
    ref = np.zeros((20, 20, 20), np.int64)
    pred = np.zeros_like(ref)
    ref[5:10, 5:10, 5:10] = 1  # 125 voxels
    pred[5:10, 5:10, 7:12] = 1  # overlap 5*5*3 = 75
    pred[15, 15, 15] = 2
    ref[15, 15, 18] = 2
    m = segmentation_metrics(pred, ref, num_classes=4, spacing=(2.0, 1.0, 0.5))
    assert m["dice"][1] == pytest.approx(2 * 75 / 250)
    assert m["hd95"][2] == pytest.approx(1.5)  # two single voxels 3 apart along x at 0.5 mm
    assert math.isnan(m["dice"][3]) and math.isnan(m["hd95"][3])  # absent from both
    same = segmentation_metrics(ref, ref, num_classes=3)
    assert same["dice"][1] == 1.0 and same["hd95"][1] == 0.0


def test_sampler_oversamples_foreground_and_pads_small_volumes():
    case = _sphere_case("a", shape=(40, 60, 60), centre=(20, 30, 30), radius=3)
    rng = np.random.default_rng(0)
    always = PatchSampler([case], [16, 16, 16], oversample_foreground=1.0)
    never = PatchSampler([case], [16, 16, 16], oversample_foreground=0.0)
    hits_always = np.mean([(always.sample(rng, 1).labels > 0).any() for _ in range(40)])
    hits_never = np.mean([(never.sample(rng, 1).labels > 0).any() for _ in range(200)])
    assert hits_always == 1.0 and hits_never < 0.5
    small = PatchSampler([_sphere_case("s", shape=(10, 12, 12), centre=(5, 6, 6), radius=3)], [16, 32, 32])
    b = small.sample(rng, 2)
    assert b.images.shape == (2, 1, 16, 32, 32) and b.labels.shape == (2, 16, 32, 32)
    assert (b.labels == 1).sum() == 2 * (small.cases[0].label.sum())  # the whole volume fits, nothing lost
    assert (b.labels == -1).sum() == 2 * (16 * 32 * 32 - 10 * 12 * 12)  # padding is marked outside (-1)


def test_train_config_file_round_trip(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"epochs": 3, "lr": 0.02, "patch_size": [32, 64, 64]}))
    cfg = TrainConfig.from_file(path, seed=7)
    assert (cfg.epochs, cfg.lr, cfg.patch_size, cfg.seed, cfg.momentum, cfg.iterations_per_epoch) == (3, 0.02, [32, 64, 64], 7, 0.99, 250)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    path.write_text(json.dumps({"epoch": 3}))
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_file(path)


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"trainer": {"model": {"w": torch.ones(2)}}, "epoch": 1, "rng": {}, "history": []})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"trainer": {"model": {"w": torch.zeros(2)}}, "bad": Unpicklable()})
    assert load_checkpoint(path)["trainer"]["model"]["w"].tolist() == [1.0, 1.0]  # the previous checkpoint survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left behind


# ---- the loop ---------------------------------------------------------------------------------------------------
class _Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted_run(tiny_model, tmp_path):
    train, val = [_sphere_case("t0", seed=0), _sphere_case("t1", seed=1, centre=(16, 18, 22))], [_sphere_case("v", seed=2)]
    cfg = TrainConfig(epochs=3, iterations_per_epoch=2, batch_size=2, patch_size=[32, 32, 32], progress=False, seed=3,
                      augmentation=AugmentationConfig(p_rot=0.5, p_scale=0.5, p_noise=0.5, p_gamma=0.5, p_lowres=0.5))

    def fresh():
        torch.manual_seed(0)
        return from_upstream(tiny_model, num_classes=2)

    ref_model = fresh()
    ref = finetune(ref_model, train, val, cfg.replace(output_dir=str(tmp_path / "a")))

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise _Interrupt

    model = fresh()
    with pytest.raises(_Interrupt):
        finetune(model, train, val, cfg.replace(output_dir=str(tmp_path / "b")), on_epoch_end=stop_after_first)
    assert load_checkpoint(tmp_path / "b" / "checkpoint_latest.pt")["epoch"] == 1
    resumed_model = from_upstream(tiny_model, num_classes=2)  # different random heads: the checkpoint restores them
    resumed = finetune(resumed_model, train, val, cfg.replace(output_dir=str(tmp_path / "b")), resume=True)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in ref.history]
    ref_state, state = ref_model.state_dict(), resumed_model.state_dict()
    assert max(float((ref_state[k] - state[k]).abs().max()) for k in ref_state) <= 1e-6
    assert resumed.dice == ref.dice
    # the run directory holds what was promised
    out = tmp_path / "b"
    assert {"checkpoint_latest.pt", "log.csv", "log.json", "curves.png", "final", "best", "result.json"} <= {p.name for p in out.iterdir()}
    log = json.loads((out / "log.json").read_text())
    assert len(log["history"]) == 3 and log["resumed_after_epochs"] == [1]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lean_training_setting_runs_in_the_engine_with_the_same_losses(tmp_path):
    """``optimize_for_training(channels_last=True, grad_checkpointing=True)`` (the lowest-memory setting of
    benchmarks/README.md) is a drop-in for ``finetune``: same losses and weights as the plain network.

    A 3-stage backbone with a 4x8x8 bottleneck: the tiny fixture net's 2x2x2 bottleneck amplifies float32
    rounding so much that even the plain network's fast path ends 72% of the update away from it."""
    from uniseg_hub import UniSegBackbone, UniSegConfig
    from uniseg_hub.models.perf import optimize_for_training

    config = UniSegConfig.btcv(num_classes=2, patch_size=[16, 32, 32], base_num_features=4, input_channels=[1],
                               pool_op_kernel_sizes=[[1, 2, 2], [2, 2, 2]], conv_kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]])
    train, val = [_sphere_case("t0", seed=0), _sphere_case("t1", seed=1, centre=(16, 18, 22))], [_sphere_case("v", seed=2)]
    cfg = TrainConfig(epochs=2, iterations_per_epoch=2, batch_size=2, patch_size=[16, 32, 32], progress=False, seed=3)
    torch.manual_seed(0)
    plain = UniSegBackbone(config)
    initial = copy.deepcopy(plain.state_dict())
    lean = optimize_for_training(copy.deepcopy(plain), channels_last=True, grad_checkpointing=True)
    ref = finetune(plain, train, val, cfg.replace(output_dir=str(tmp_path / "a")))
    out = finetune(lean, train, val, cfg.replace(output_dir=str(tmp_path / "b")))
    ref_losses, losses = [h["train_loss"] for h in ref.history], [h["train_loss"] for h in out.history]
    assert max(abs(a - b) / abs(a) for a, b in zip(ref_losses, losses)) <= 1e-5  # measured 6e-7
    ref_state, state = plain.state_dict(), lean.state_dict()
    assert list(state) == list(ref_state)
    diff = torch.cat([(state[k] - ref_state[k]).flatten() for k in ref_state])
    update = torch.cat([(ref_state[k] - initial[k]).flatten() for k in ref_state])
    assert float(diff.norm() / update.norm()) < 5e-3  # measured 4e-4 (the default-layout fast path: 4e-4 too)
    assert out.dice == pytest.approx(ref.dice, abs=1e-3)


def test_multitask_uniseg_training_feeds_each_case_its_task(tiny_model):
    model = from_upstream(tiny_model, num_classes=2, strategy="keep-prompt")
    cases = [_sphere_case("new", shape=(32, 64, 64), centre=(16, 32, 32)),  # no task id: the new task
             _sphere_case("spleen", shape=(32, 64, 64), centre=(12, 30, 36), task_id=6)]
    cfg = TrainConfig(epochs=1, iterations_per_epoch=2, batch_size=2, augment=False, progress=False)
    before = model.prompt.prompt.detach().clone()
    result = finetune(model, cases, cases, cfg)
    assert not torch.equal(before[:, 11], model.prompt.prompt.detach()[:, 11])
    assert set(result.dice) == {"downstream/1", "spleen/spleen"}


def _mni(mm: int = 3):
    def load(name):
        a = np.asarray(nib.load(MNI / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz").dataobj, dtype=np.float32)
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 1, 0)))[None, None]  # (z, y, x)
        return F.avg_pool3d(t, mm, ceil_mode=True)[0, 0].numpy()

    t1, gm, wm = load("t1"), load("gm"), load("wm")
    label = np.zeros(t1.shape, np.int64)
    label[gm > 0.5], label[wm > 0.5] = 1, 2
    image = ((t1 - t1.mean()) / t1.std())[None]
    mid = int(t1.shape[0] * 0.55)  # train on the inferior part of the brain, validate on the superior part
    return (Case("mni_inferior", image[:, :mid].copy(), label[:mid].copy(), (mm,) * 3),
            Case("mni_superior", image[:, mid:].copy(), label[mid:].copy(), (mm,) * 3))


def _mni_finetune(tiny_model, epochs: int):
    train, val = _mni(3)
    torch.manual_seed(0)
    task = TaskSpec("mni_tissue", 3, ["MR"], {"1": "grey matter", "2": "white matter"})
    model = from_upstream(tiny_model, task=task, patch_size=[32, 64, 64])
    before = evaluate(model, [val], roi_size=[32, 64, 64], hd95=False)
    cfg = TrainConfig(epochs=epochs, iterations_per_epoch=10, batch_size=2, augment=False, val_every=epochs, progress=False)
    return before, finetune(model, [train], [val], cfg)


def test_real_data_finetune_raises_validation_dice(tiny_model):
    """MNI152 T1 at 3 mm, grey/white matter (probability > 0.5); train inferior, validate superior brain.

    60 iterations of the official recipe (no augmentation) lift white-matter Dice above 0.6 and the mean Dice
    by more than 0.15 over the transferred model with its random heads.
    """
    before, result = _mni_finetune(tiny_model, epochs=6)
    assert result.dice["white matter"] > 0.6, result.dice
    assert result.mean_dice > before["mean_dice"] + 0.15, (before["dice"], result.dice)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert math.isfinite(result.hd95["white matter"])


# ---- command line -----------------------------------------------------------------------------------------------
def test_cli_finetune_on_nnunet_raw_folder(tmp_path):
    from uniseg_hub.cli import main

    root = tmp_path / "Task500_Spheres"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(3):
        case = _sphere_case(f"case{i}", shape=(40, 44, 44), centre=(20, 22, 20 + i), seed=i)
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        nib.save(nib.Nifti1Image((case.image[0].T * 100).astype(np.float32), affine), root / "imagesTr" / f"case{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(case.label.T.astype(np.uint8), affine), root / "labelsTr" / f"case{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "spheres", "modality": {"0": "MRI"},
                                                   "labels": {"0": "background", "1": "sphere"}}))
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"augment": False, "device": "cpu"}))
    out = tmp_path / "run"
    code = main(["finetune", "--weights", str(Path(__file__).parent / "fixtures/uniseg_reference/tiny_upstream.model"),
                 "--data", str(root), "-o", str(out), "--config", str(cfg), "--epochs", "1", "--iterations", "2",
                 "--batch-size", "1", "--patch-size", "32,32,32", "--no-progress"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["provenance"]["transfer"]["strategy"] == "official" and result["epochs"] == 1 and "sphere" in result["dice"]
    assert result["validation"].startswith("UniSegPredictor on the raw files")
    assert (out / "checkpoint_latest.pt").is_file() and (out / "final" / "model.safetensors").is_file()
