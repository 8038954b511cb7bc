"""The official fine-tuning recipe, step for step: :class:`uniseg_hub.training.Trainer` against three iterations of
the official ``UniSeg_Trainer_DS`` (nnU-Net v1 ``nnUNetTrainerV2``) and the official loss on its own.

Fixtures (``tests/fixtures/train_step/``, see its PROVENANCE.md): the tiny BTCV backbone (14 classes, base 3,
patch 32x64x64) initialised by the official transfer, three stored batches, the official losses, lrs and the
weights after iteration 3. Tolerances are the fixture README's bar, >= 6x the float32-vs-float64 distance of the
official run itself, and each still catches the recipe mistakes measured there: loss 2e-6; heads
(``seg_outputs_down.*``) 1e-6 (catches missing weight decay, 6.4e-6, and sample instead of batch Dice, 3.6e-6);
every other weight 3e-5 (catches no Nesterov 4.4e-3, momentum 0.9 1.3e-3, the lowest output kept 1.4e-3, a
constant lr 1.5e-4). The 2- and 4-channel stems and the coarsest head get no gradient and must stay bitwise equal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uniseg_hub import official_key_map, to_official_state_dict
from uniseg_hub.models.adapters import from_upstream
from uniseg_hub.training import DeepSupervisionLoss, TrainConfig, Trainer, deep_supervision_weights, downsample_labels

from .conftest import load_npz

FIX = Path(__file__).parent / "fixtures" / "train_step"
META = json.loads((FIX / "train_step.json").read_text())


@pytest.fixture(scope="module")
def io() -> dict[str, np.ndarray]:
    return load_npz(FIX / "train_step_io.npz")


@pytest.fixture(scope="module")
def step3() -> dict[str, np.ndarray]:
    return load_npz(FIX / "train_step_state_step3.npz")


def _initial_model(tiny_model, downstream_io):
    """The official initial state: the official transfer plus the fixture's new heads (checked by sha256)."""
    down = from_upstream(tiny_model, num_classes=14, strategy="official")
    keymap = official_key_map(down)
    state = down.state_dict()
    for ours, official in keymap.items():
        if official.startswith("seg_outputs_down."):
            state[ours] = torch.from_numpy(downstream_io[f"state/{official}"])
    down.load_state_dict(state, strict=True)
    want = json.loads((FIX / "state_init_sha256.json").read_text())["sha256"]
    got = {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest() for k, v in to_official_state_dict(down).items()}
    assert got == want
    return down


def test_default_train_config_is_the_official_recipe():
    c, t, opt = TrainConfig(), META["trainer"], META["optimizer"]["hyper_parameters_at_construction"]
    assert (c.epochs, c.iterations_per_epoch, c.batch_size) == (t["max_num_epochs"], t["num_batches_per_epoch"], t["batch_size"])
    assert (c.lr, c.weight_decay, c.oversample_foreground, c.batch_dice) == (t["initial_lr"], t["weight_decay"],
                                                                             t["oversample_foreground_percent"], t["batch_dice"])
    assert (c.momentum, c.nesterov, opt["dampening"]) == (opt["momentum"], opt["nesterov"], 0)
    assert c.poly_exponent == 0.9 and c.grad_clip == 12.0 and c.dice_smooth == META["loss"]["dice"]["smooth"]
    assert deep_supervision_weights(5) == pytest.approx(t["ds_loss_weights"], abs=1e-15)
    a, d = c.augmentation, t["data_aug_params"]
    assert [-np.radians(a.rotation_deg), np.radians(a.rotation_deg)] == pytest.approx(d["rotation_x"])
    assert (a.p_rot, a.p_scale, a.scale_range, a.p_gamma, a.gamma_range) == (d["p_rot"], d["p_scale"], d["scale_range"],
                                                                            d["p_gamma"], d["gamma_range"])
    assert (a.do_elastic, a.gamma_retain_stats, a.mirror_axes) == (d["do_elastic"], d["gamma_retain_stats"], d["mirror_axes"])


def test_lr_per_epoch_equals_the_official_schedule(tiny_model, io):
    trainer = Trainer(from_upstream(tiny_model, num_classes=14), TrainConfig(device="cpu"))
    assert trainer.optimizer.param_groups[0]["lr"] == io["lrs"][0]  # set at construction, as maybe_update_lr(0)
    assert [trainer.set_epoch(k) for k in range(3)] == io["lrs"].tolist()  # bitwise: the same formula
    assert trainer.set_epoch(99) == pytest.approx(0.01 * 0.01**0.9, rel=1e-15)
    assert len(trainer.optimizer.param_groups) == 1
    with pytest.raises(ValueError, match="epoch must be an integer"):
        trainer.set_epoch(2.5)


def test_three_official_iterations(tiny_model, downstream_io, io, step3):
    model = _initial_model(tiny_model, downstream_io)
    init = {k: v.clone() for k, v in to_official_state_dict(model).items()}
    trainer = Trainer(model, TrainConfig(device="cpu"))
    losses = []
    for k in range(3):
        trainer.set_epoch(k)
        labels = torch.from_numpy(io[f"batch{k}/target0"])[:, 0].long()  # the Trainer downsamples itself
        losses.append(trainer.step(torch.from_numpy(io[f"batch{k}/data"]), labels))
    np.testing.assert_allclose(losses, io["losses"], rtol=0, atol=2e-6)
    after = to_official_state_dict(model)
    assert sorted(after) == sorted(step3)
    for key, ref in step3.items():
        diff = float((after[key].detach() - torch.from_numpy(ref)).abs().max())
        assert diff <= (1e-6 if key.startswith("seg_outputs_down.") else 3e-5), (key, diff)
    for key in META["keys_unchanged_after_3_steps"]:  # no gradient: SGD and its weight decay skip them
        assert torch.equal(after[key], init[key]), key
    moved = [k for k in after if k not in META["keys_unchanged_after_3_steps"] and not torch.equal(after[k], init[k])]
    assert len(moved) == len(after) - len(META["keys_unchanged_after_3_steps"])


def test_targets_are_downsampled_the_nnunet_way(io):
    for k in range(3):
        full = torch.from_numpy(io[f"batch{k}/target0"])[:, 0].long()
        shapes = [io[f"batch{k}/target{s}"].shape[2:] for s in range(5)]
        for s, ours in enumerate(downsample_labels(full, shapes)):
            assert torch.equal(ours, torch.from_numpy(io[f"batch{k}/target{s}"])[:, 0].long()), (k, s)
    # the corner voxel (F.interpolate "nearest") is a different voxel: the fixture would catch that mistake
    full = torch.from_numpy(io["batch0/target0"])[:, 0].float()[:, None]
    corner = torch.nn.functional.interpolate(full, size=io["batch0/target2"].shape[2:], mode="nearest")[:, 0].long()
    assert not torch.equal(corner, torch.from_numpy(io["batch0/target2"])[:, 0].long())


@pytest.mark.parametrize("pair", [0, 1])
def test_official_loss_pairs(pair):
    with np.load(FIX / "loss_io.npz") as z:
        outs = [torch.from_numpy(z[f"pair{pair}/output{s}"]) for s in range(5)]
        targets = [torch.from_numpy(z[f"pair{pair}/target{s}"]).long() for s in range(5)]
        want = float(z[f"pair{pair}/loss"])
    loss_fn = DeepSupervisionLoss()
    assert abs(float(loss_fn(outs, targets)) - want) <= 2e-6  # the official targets
    assert abs(float(loss_fn(outs, targets[0][:, 0])) - want) <= 2e-6  # downsampled here


def test_loss_convention_against_monai():
    """MONAI's DiceCELoss with nnU-Net's smoothing reports CE + 1 - Dice: ours is exactly 1 lower."""
    from monai.losses import DiceCELoss

    with np.load(FIX / "loss_io.npz") as z:
        out, target = torch.from_numpy(z["pair1/output0"]), torch.from_numpy(z["pair1/target0"]).long()
    monai = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5,
                       smooth_dr=1e-5 + 1e-8)(out, target)
    ours = DeepSupervisionLoss()(out, target[:, 0])
    assert abs(float(monai) - 1.0 - float(ours)) < 1e-6


def test_task_classes_restrict_each_sample_to_its_task():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 8, 8, 8, generator=g)
    labels = torch.randint(0, 3, (3, 8, 8, 8), generator=g)
    labels[2] = labels[2].clamp(max=1)
    loss = DeepSupervisionLoss(batch_dice=True)
    mixed = loss(logits, labels, task_classes=[3, 3, 2])
    want = 2 / 3 * loss(logits[:2, :3], labels[:2]) + 1 / 3 * loss(logits[2:, :2], labels[2:])
    assert abs(float(mixed) - float(want)) < 1e-6
    with pytest.raises(ValueError, match="task with 2 classes"):
        loss(logits, labels, task_classes=[3, 2, 3])
