"""UniSeg backbones as MONAI DynUNet: official downstream fixture logits, deep supervision, the bias cancellation
before instance norm (measured), MONAI axes, the way back, the bundle folder, the CLI and the example."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet

from uniseg_hub import UniSegBackbone, UniSegConfig
from uniseg_hub.models.adapters import from_upstream
from uniseg_hub.cli import main
from uniseg_hub.interop import (dynunet_outputs, from_dynunet, load_dynunet_bundle, save_dynunet_bundle,
                                to_dynunet)

from .conftest import REF, TINY_MODEL, max_abs

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def official_down():
    """The official downstream BTCV network: the tiny upstream transferred (official strategy) + the fixture's heads."""
    with np.load(REF / "tiny_downstream_btcv_io.npz") as z:
        io = {k: z[k] for k in z.files}
    down = from_upstream(str(TINY_MODEL), num_classes=14)
    with torch.no_grad():
        for u in range(5):
            down.decoder.heads[u].weight.copy_(torch.from_numpy(io[f"state/seg_outputs_down.{u}.weight"]))
    return down.eval(), io


def _conv_biases(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith(".bias") and ".norm." not in k}


def test_dynunet_reproduces_official_downstream_fixture(official_down):
    down, io = official_down
    net = to_dynunet(down, in_channels=1).eval()
    assert isinstance(net, DynUNet)
    cfg = down.config
    assert [list(k) for k in net.kernel_size] == cfg.conv_kernel_sizes
    assert [list(s) for s in net.strides] == cfg.stage_strides
    assert list(net.filters) == cfg.stage_channels and net.out_channels == 14
    # the official fixture's convs carry real biases; DynUNet's convs have none, yet the logits are the same
    biases = _conv_biases(down)
    assert len(biases) == 2 * 6 + 2 * 5 + 2 and max(float(b.abs().max()) for b in biases.values()) > 1e-2
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size != (1, 1, 1))
    x = torch.from_numpy(io["input"])
    with torch.no_grad():
        assert max_abs(net(x), io["out"]) <= 1e-4
        feats = down.encoder(x)
    assert max_abs(feats[-1], io["skip5"]) <= 1e-4  # our side of the comparison is the official network too


def test_conv_bias_before_instance_norm_cancels_exactly(official_down):
    """(x + b) - mean(x + b) = x - mean(x): dropping the bias changes the conv output by |b| but the normalised
    output by float rounding only; the same drop without the norm would not be exact."""
    down, io = official_down
    block = down.encoder.stages[1][0]
    x = down.encoder.stages[0](torch.from_numpy(io["input"]))
    with torch.no_grad():
        with_bias = block.conv(x)
        without = F.conv3d(x, block.conv.weight, None, block.conv.stride, block.conv.padding)
        shift = float((with_bias - without).abs().max())
        after_norm = float((block.norm(with_bias) - block.norm(without)).abs().max())
    assert shift == pytest.approx(float(block.conv.bias.detach().abs().max()), rel=1e-4) and shift > 1e-2
    assert after_norm <= 1e-5, after_norm  # measured: ~5e-7


def test_conv_bias_before_batch_norm_moves_into_running_mean():
    cfg = UniSegConfig.btcv(base_num_features=4, max_num_features=16, patch_size=[16, 32, 32], num_classes=3,
                            input_channels=[1], norm=("batch", {}), pool_op_kernel_sizes=[[1, 2, 2], [2, 2, 2], [2, 2, 2]],
                            conv_kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])
    model = UniSegBackbone(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith((".bias", "running_mean")):
                t.copy_(torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    model.eval()
    net = to_dynunet(model).eval()
    x = torch.randn(2, 1, 16, 32, 32, generator=g)
    with torch.no_grad():
        assert max_abs(net(x), model(x)) <= 1e-4
    bias = model.encoder.stages[1][0].conv.bias
    rm_ours, rm_theirs = model.encoder.stages[1][0].norm.running_mean, net.downsamples[0].norm1.running_mean
    assert torch.allclose(rm_theirs, rm_ours - bias) and float(bias.abs().max()) > 0.1


def test_deep_supervision_heads_are_dynunets(official_down):
    down, io = official_down
    down.set_deep_supervision(True)
    try:
        net = to_dynunet(down, in_channels=1)
        assert net.deep_supervision and net.deep_supr_num == 4 and len(net.deep_supervision_heads) == 4
        x = torch.from_numpy(io["input"])
        with torch.no_grad():
            ours = down(x)
            native = dynunet_outputs(net.eval(), x)  # eval: each head at its own scale (net.heads)
            stacked = net.train()(x)                 # training mode: MONAI's stacked, nearest-upsampled outputs
        assert [tuple(o.shape) for o in native] == [tuple(o.shape) for o in ours] and len(ours) == 5
        assert max(max_abs(a, b) for a, b in zip(native, ours)) <= 1e-4
        assert stacked.shape == (1, 5, 14, 32, 64, 64)
        up = [F.interpolate(o, size=ours[0].shape[2:]) for o in ours]
        assert max(max_abs(stacked[:, i], u) for i, u in enumerate(up)) <= 1e-4
        assert max_abs(native[0], io["out"]) <= 1e-4
    finally:
        down.set_deep_supervision(False)


def test_monai_axes_variant_takes_xyz_tensors(official_down):
    down, io = official_down
    net = to_dynunet(down, in_channels=1, axes="xyz").eval()
    assert [list(k) for k in net.kernel_size][0] == [3, 3, 1]  # the 1x3x3 stage-0 kernel, reversed
    x = torch.from_numpy(io["input"])
    with torch.no_grad():
        y = net(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)
    assert max_abs(y, io["out"]) <= 1e-4


@pytest.mark.parametrize("axes", ["zyx", "xyz"])
def test_from_dynunet_is_the_way_back(official_down, axes):
    down, io = official_down
    down.set_deep_supervision(True)
    try:
        net = to_dynunet(down, in_channels=1, axes=axes)
    finally:
        down.set_deep_supervision(False)
    back = from_dynunet(net, down.config, axes=axes).eval()
    assert isinstance(back, UniSegBackbone) and back.config.input_channels == [1]
    assert back.config.tasks == down.config.tasks and back.config.preprocessing == down.config.preprocessing
    rep = back.load_report
    assert not rep.random_init and set(rep.adapted) == set(_conv_biases(back))
    ours, theirs = down.state_dict(), back.state_dict()
    for k, v in theirs.items():  # everything but the (zeroed) conv biases is the original tensor
        if k not in rep.adapted:
            assert torch.equal(v, ours[k]), k
    back.set_deep_supervision(False)
    x = torch.from_numpy(io["input"])
    with torch.no_grad():
        assert max_abs(back(x), io["out"]) <= 1e-4
    derived = from_dynunet(net, axes=axes)  # no config: the architecture from the DynUNet alone
    assert derived.config.conv_kernel_sizes == down.config.conv_kernel_sizes
    assert derived.config.stage_channels == down.config.stage_channels and derived.config.num_classes == 14


def test_from_dynunet_refuses_what_uniseg_cannot_hold(official_down):
    down, _ = official_down
    net = to_dynunet(down, in_channels=1)
    with torch.no_grad():
        net.output_block.conv.conv.bias.fill_(0.5)
    with pytest.raises(ValueError, match=r"output_block has a nonzero bias \(max \|b\| = 0.5\)"):
        from_dynunet(net)
    res = DynUNet(3, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16], res_block=True)
    with pytest.raises(ValueError, match="res_block=True"):
        from_dynunet(res)
    odd = DynUNet(3, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 6, 16])
    with pytest.raises(ValueError, match=r"filters \[4, 6, 16\] do not follow"):
        from_dynunet(odd)


def test_to_dynunet_errors_are_clear(tiny_model):
    with pytest.raises(ValueError, match=r"prompt-driven UniSeg cannot become a DynUNet.*from_upstream"):
        to_dynunet(tiny_model)
    small = dict(base_num_features=2, max_num_features=8, patch_size=[16, 32, 32], num_classes=2,
                 pool_op_kernel_sizes=[[1, 2, 2], [2, 2, 2]], conv_kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]])
    multi = UniSegBackbone(UniSegConfig.btcv(**small))  # stems for 1, 2, 4 channels, no task recorded
    with pytest.raises(ValueError, match=r"stems for \[1, 2, 4\] channels .* choose a stem with in_channels="):
        to_dynunet(multi)
    assert to_dynunet(multi, in_channels=2).in_channels == 2
    with pytest.raises(ValueError, match="exactly two convs per stage; this network has conv_per_stage=3"):
        to_dynunet(UniSegBackbone(UniSegConfig.btcv(conv_per_stage=3, **small)), in_channels=1)
    with pytest.raises(ValueError, match="at least 3 stages"):
        to_dynunet(UniSegBackbone(UniSegConfig.btcv(**{**small, "pool_op_kernel_sizes": [[2, 2, 2]],
                                                        "conv_kernel_sizes": [[3, 3, 3]] * 2})), in_channels=1)


def test_bundle_folder_and_cli(official_down, tmp_path, capsys):
    down, io = official_down
    weights = tmp_path / "btcv_backbone"
    down.save_pretrained(weights)
    out = tmp_path / "bundle"
    assert main(["export", "dynunet", str(weights), str(out), "--channels", "1"]) == 0
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 14
    net = load_dynunet_bundle(out)  # built by monai.bundle.ConfigParser from configs/inference.json
    with torch.no_grad():
        assert max_abs(net(torch.from_numpy(io["input"])), io["out"]) <= 1e-4
    folder, diff = save_dynunet_bundle(down, tmp_path / "b2", 1, axes="xyz")
    assert diff is not None and diff <= 1e-4
    assert json.loads((folder / "configs" / "inference.json").read_text())["network_def"]["kernel_size"][0] == [3, 3, 1]
    assert main(["export", "dynunet", str(TINY_MODEL), str(tmp_path / "no")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniseg-hub export: error: a prompt-driven UniSeg cannot become a DynUNet") and "\n" not in err
    assert not (tmp_path / "no").exists()


@pytest.mark.examples
def test_monai_dynunet_example(tmp_path):
    path = Path(__file__).resolve().parents[1] / "examples" / "monai_dynunet_inference.py"
    spec = importlib.util.spec_from_file_location("examples_monai_dynunet_inference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--out-dir", str(tmp_path)])
    assert out["max_abs_diff"] <= 1e-4 and out["bundle_diff"] == 0.0
    assert out["logits"].shape[1] == 3 and out["logits"].shape[2:] == out["image"].shape[2:]
    # measured with the demo's tissue heads on the transferred backbone: grey matter 0.80, white matter 0.68
    assert out["dice"][0] > 0.7 and out["dice"][1] > 0.55, out["dice"]
    import nibabel as nib

    saved = np.asarray(nib.load(out["label_file"]).dataobj)
    assert saved.shape == tuple(out["image"].shape[2:]) and set(np.unique(saved)) <= {0, 1, 2}
