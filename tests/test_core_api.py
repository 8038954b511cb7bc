"""Core API: config JSON round trip, backward pass, encoder features, and every input error by its message."""

from __future__ import annotations

import json

import pytest
import torch

from uniseg_hub import UniSeg, UniSegBackbone, UniSegConfig, UniSegEncoder

SMALL = dict(base_num_features=4, patch_size=[32, 64, 64])  # bottleneck 2x2x2 (instance norm needs > 1 voxel)


@pytest.fixture()
def small():
    torch.manual_seed(0)
    return UniSeg(UniSegConfig.uniseg_11task(**SMALL)).eval()


def test_presets_describe_the_published_networks():
    cfg = UniSegConfig.uniseg_11task()
    assert cfg.patch_size == [64, 192, 192] and cfg.preprocessing.spacing == [3.0, 1.5, 1.5]
    assert cfg.stage_channels == [32, 64, 128, 256, 320, 320]
    assert cfg.pool_op_kernel_sizes == [[1, 2, 2]] + [[2, 2, 2]] * 4
    assert cfg.conv_kernel_sizes == [[1, 3, 3]] + [[3, 3, 3]] * 5
    assert cfg.input_channels == [1, 2, 4] and cfg.num_classes == 4 and cfg.num_tasks == 11
    assert cfg.prompt_size == [4, 6, 6] and cfg.fusion_channels == 82 and cfg.divisor == [16, 32, 32]
    assert [t.num_classes for t in cfg.tasks] == [3, 3, 3, 3, 2, 2, 2, 2, 2, 4, 2]
    assert cfg.task_index("spleen") == 6 and cfg.task_index(10) == 10
    assert UniSegConfig.btcv().num_classes == 14 and UniSegConfig.vs().num_classes == 2


def test_config_json_round_trip_rebuilds_identical_model(tmp_path, small):
    cfg = small.config
    path = tmp_path / "config.json"
    cfg.to_json(path)
    again = UniSegConfig.from_json(path)
    assert again == cfg
    assert UniSegConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(path.read_text())["norm"] == ["instance", {"affine": True, "eps": 1e-5}]
    rebuilt = UniSeg(again).eval()
    rebuilt.load_state_dict(small.state_dict(), strict=True)
    x = torch.randn(2, 1, *cfg.patch_size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x, [3, 4]), small(x, [3, 4]))


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="conv_kernel_sizes needs one entry per stage"):
        UniSegConfig(conv_kernel_sizes=[[3, 3, 3]] * 3)
    with pytest.raises(ValueError, match=r"patch_size \[60, 192, 192\] must be divisible by the total stride \[16, 32, 32\]"):
        UniSegConfig(patch_size=[60, 192, 192])
    with pytest.raises(ValueError, match=r"leaves a 1-voxel bottleneck \(total stride \[16, 32, 32\]\)"):
        UniSegConfig(patch_size=[16, 32, 32])
    with pytest.raises(ValueError, match="unknown layer name 'weird'"):
        UniSegConfig(norm=("weird", {}))
    with pytest.raises(ValueError, match=r"unknown UniSegConfig field\(s\) \['bogus'\]"):
        UniSegConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="unknown task 'heart'"):
        UniSegConfig.uniseg_11task().task_index("heart")


def test_every_parameter_gets_a_gradient_with_deep_supervision(small):
    small.train()
    small.set_deep_supervision(True)
    x = torch.randn(2, 2, *small.config.patch_size)
    outs = small(x, [10, 4])
    assert len(outs) == 5
    loss = sum(o.square().mean() * w for o, w in zip(outs, [8, 4, 2, 1, 1]))
    loss.backward()
    missing = [n for n, p in small.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # the 1- and 4-channel stems are unused by a 2-channel batch; everything else must get a gradient
    assert set(missing) == {"encoder.stages.0.0.convs.1.weight", "encoder.stages.0.0.convs.1.bias",
                            "encoder.stages.0.0.convs.4.weight", "encoder.stages.0.0.convs.4.bias"}
    assert all(small.get_parameter(n).grad.abs().sum() > 0 for n, _ in small.named_parameters() if n not in missing)


def test_encoder_features_and_intermediates():
    enc = UniSegEncoder(UniSegConfig.uniseg_11task(**SMALL)).eval()
    assert [f["num_chs"] for f in enc.feature_info] == [4, 8, 16, 32, 64, 128]
    assert [f["reduction"] for f in enc.feature_info][-1] == [16, 32, 32]
    x = torch.randn(1, 4, 64, 64, 96)  # the encoder takes any multiple of the total stride
    with torch.no_grad():
        feats = enc(x)
        final, inter = enc.forward_intermediates(x, indices=2)
        early = enc.forward_intermediates(x, indices=[0, 1], intermediates_only=True, stop_early=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(64, 64, 96), (64, 32, 48), (32, 16, 24), (16, 8, 12), (8, 4, 6), (4, 2, 3)]
    assert torch.equal(final, feats[-1]) and torch.equal(inter[0], feats[-2]) and torch.equal(inter[1], feats[-1])
    assert torch.equal(early[0], feats[0]) and torch.equal(early[1], feats[1])


def test_backbone_takes_any_multiple_of_the_divisor():
    net = UniSegBackbone(UniSegConfig.btcv(**SMALL)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 48, 64, 96)).shape == (1, 14, 48, 64, 96)


def test_reset_classifier_replaces_every_head(small):
    small.reset_classifier(7)
    small.set_deep_supervision(True)
    with torch.no_grad():
        outs = small(torch.randn(1, 1, *small.config.patch_size), 0)
    assert all(o.shape[1] == 7 for o in outs) and small.config.num_classes == 7


# ---- errors, each by its message -----------------------------------------------------------------------------
def test_unsupported_channel_count(small):
    with pytest.raises(ValueError, match=r"input stems for \[1, 2, 4\] channels .* but the input has 3 channels"):
        small(torch.randn(1, 3, 32, 64, 64), 0)


def test_task_id_out_of_range(small):
    with pytest.raises(ValueError, match=r"task id \[11\] out of range: this model has 11 tasks \(ids 0..10\)"):
        small(torch.randn(1, 1, 32, 64, 64), 11)
    with pytest.raises(ValueError, match="task_id has 3 entries for a batch of 2"):
        small(torch.randn(2, 1, 32, 64, 64), [0, 1, 2])
    with pytest.raises(TypeError, match="task_id must hold integers"):
        small(torch.randn(1, 1, 32, 64, 64), torch.tensor([0.5]))


def test_spatial_size_the_prompt_cannot_serve(small):
    with pytest.raises(ValueError, match=r"needs inputs of exactly \(32, 64, 64\) .* got \(64, 128, 128\).*sliding window"):
        small(torch.randn(1, 1, 64, 128, 128), 0)


def test_wrong_dtype_and_ndim(small):
    with pytest.raises(ValueError, match=r"must be 5-D \(B, C, D, H, W\), got 4-D .* add a batch dimension"):
        small(torch.randn(1, 32, 64, 64), 0)
    with pytest.raises(TypeError, match="must be a floating-point tensor, got torch.int64"):
        small(torch.zeros(1, 1, 32, 64, 64, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="dtype torch.float64 does not match the model's parameters"):
        small(torch.zeros(1, 1, 32, 64, 64, dtype=torch.float64), 0)


def test_backbone_rejects_sizes_that_are_not_multiples():
    net = UniSegBackbone(UniSegConfig.btcv(**SMALL))
    with pytest.raises(ValueError, match=r"\(20, 64, 64\) is not a multiple of the encoder's total stride \(16, 32, 32\)"):
        net(torch.randn(1, 1, 20, 64, 64))
