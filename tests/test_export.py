"""ONNX / TorchScript export of the tiny reference network: exported graphs reproduce the official outputs and the
eager network (≤ 1e-4), with a dynamic batch axis (and dynamic spatial size for the backbone), and run through the
whole-volume predictor to the same segmentation."""

from __future__ import annotations

import json

import numpy as np
import onnx  # the [export] extra, also in [test]
import pytest
import torch

from uniseg_hub import UniSeg, UniSegBackbone, checkpoint_filter_fn, official_key_map
from uniseg_hub.export import (
    DEFAULT_OPSET,
    BackboneExport,
    StableInstanceNorm,
    TaskFixedUniSeg,
    TaskInputUniSeg,
    build_export_module,
    export_onnx,
    export_torchscript,
    load_exported,
    verify_export,
)

from .conftest import REF, max_abs


TOL = 1e-4  # REFERENCE_README: max abs diff on logits


@pytest.fixture(scope="module")
def upstream(tiny_config, tiny_official_state) -> UniSeg:
    model = UniSeg(tiny_config)
    model.load_state_dict(checkpoint_filter_fn(tiny_official_state, model), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def backbone(tiny_config, tiny_official_state, downstream_io) -> UniSegBackbone:
    """The official BTCV transfer of the tiny checkpoint, rebuilt from the fixture (REFERENCE_README recipe)."""
    model = UniSegBackbone(tiny_config.replace(num_tasks=0, tasks=[], num_classes=14))
    state = {}
    for ours, official in official_key_map(model).items():
        stored = f"state/{official}"
        state[ours] = torch.from_numpy(downstream_io[stored]) if stored in downstream_io else tiny_official_state[official]
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def files(upstream, backbone, tmp_path_factory) -> dict:
    """One export per variant, shared by the tests below (the TorchScript fixed-task graph: test_export_cli)."""
    d = tmp_path_factory.mktemp("export")
    out = {
        "onnx_input_c1": (export_onnx(upstream, d / "input_c1.onnx", in_channels=1), d / "input_c1.onnx"),
        "onnx_fixed_t10": (export_onnx(upstream, d / "fixed_t10.onnx", task="whole_body_tumor"), d / "fixed_t10.onnx"),
        "ts_input_c1": (export_torchscript(upstream, d / "input_c1.pt"), d / "input_c1.pt"),
        "onnx_backbone": (export_onnx(backbone, d / "backbone.onnx"), d / "backbone.onnx"),
        "ts_backbone": (export_torchscript(backbone, d / "backbone.pt"), d / "backbone.pt"),
    }
    return {k: (info, load_exported(path), path) for k, (info, path) in out.items()}


def _case(io, name):
    return torch.from_numpy(io[f"{name}/input"]), torch.from_numpy(io[f"{name}/task_id"])


# ---------------------------------------------------------------------------------------------------------------
def test_export_modules_reproduce_official_outputs(upstream, upstream_io):
    """The check-free export modules are the eager network: official logits for each stem and for mixed tasks."""
    with torch.no_grad():
        for name, channels in [("c1_b1_t7", 1), ("c4_b1_t9", 4)]:
            x, t = _case(upstream_io, name)
            assert max_abs(TaskInputUniSeg(upstream, channels)(x, t), upstream_io[f"{name}/out"]) <= TOL
        x, _ = _case(upstream_io, "c2_b1_t10")
        assert max_abs(TaskFixedUniSeg(upstream, 10, 2)(x), upstream_io["c2_b1_t10/out"]) <= TOL
        x, t = _case(upstream_io, "c1_b2_mixed_t2_t5")
        out = TaskInputUniSeg(upstream, 1)(x, t)
    for j in range(2):
        assert max_abs(out[j : j + 1], upstream_io[f"c1_b2_mixed_t2_t5/per_sample{j}_out"]) <= TOL


def test_stable_instance_norm_equals_torch_instance_norm():
    norm = torch.nn.InstanceNorm3d(5, affine=True, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(3, 5, 4, 6, 7, dtype=torch.float64) * 3 + 10
    norm = norm.double()
    assert max_abs(StableInstanceNorm(norm)(x), norm(x)) <= 1e-12
    plain = torch.nn.InstanceNorm3d(5)
    assert max_abs(StableInstanceNorm(plain)(x.float()), plain(x.float())) <= 1e-5


def test_onnx_task_input_matches_official_and_eager(files, upstream, upstream_io):
    info, net, path = files["onnx_input_c1"]
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == DEFAULT_OPSET == 18
    graph_inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert graph_inputs == {"x": ["batch", 1, 32, 64, 64], "task_id": ["batch"]}
    assert info.kind == "task_input" and info.in_channels == 1 and info.opset == 18
    assert info.compatible_tasks == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    for name in ("c1_b1_t0", "c1_b1_t7"):
        x, t = _case(upstream_io, name)
        assert max_abs(net(x, t), upstream_io[f"{name}/out"]) <= TOL
    x, t = _case(upstream_io, "c1_b2_mixed_t2_t5")  # batch 2, one task per sample
    out = net(x, t)
    for j in range(2):
        assert max_abs(out[j : j + 1], upstream_io[f"c1_b2_mixed_t2_t5/per_sample{j}_out"]) <= TOL
    x = torch.randn(3, 1, 32, 64, 64, generator=torch.Generator().manual_seed(3))  # batch 3: dynamic axis
    t = torch.tensor([8, 0, 4])
    with torch.no_grad():
        assert max_abs(net(x, t), upstream(x, t)) <= TOL


def test_onnx_task_fixed_matches_official_and_eager(files, upstream, upstream_io):
    info, net, path = files["onnx_fixed_t10"]
    assert (info.kind, info.task_id, info.task_name, info.in_channels) == ("task_fixed", 10, "whole_body_tumor", 2)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x"]
    x, _ = _case(upstream_io, "c2_b1_t10")
    assert max_abs(net(x), upstream_io["c2_b1_t10/out"]) <= TOL
    xb = torch.cat([x, torch.randn_like(x)])
    with torch.no_grad():
        assert max_abs(net(xb, 10), upstream(xb, 10)) <= TOL


def test_torchscript_matches_official_and_eager(files, upstream, upstream_io):
    _, net, _ = files["ts_input_c1"]
    for name in ("c1_b1_t0", "c1_b1_t7"):
        x, t = _case(upstream_io, name)
        assert max_abs(net(x, t), upstream_io[f"{name}/out"]) <= TOL
    x, t = _case(upstream_io, "c1_b2_mixed_t2_t5")
    out = net(x, t)
    for j in range(2):
        assert max_abs(out[j : j + 1], upstream_io[f"c1_b2_mixed_t2_t5/per_sample{j}_out"]) <= TOL
    info = files["ts_input_c1"][0]
    assert (info.kind, info.in_channels, info.opset, info.input_names) == ("task_input", 1, None, ["x", "task_id"])
    xb = torch.randn(3, 1, 32, 64, 64, generator=torch.Generator().manual_seed(4))  # batch 3: dynamic axis
    t = torch.tensor([10, 3, 6])
    with torch.no_grad():
        assert max_abs(net(xb, t), upstream(xb, t)) <= TOL


@pytest.mark.parametrize("variant", ["onnx_backbone", "ts_backbone"])
def test_backbone_matches_official_and_takes_other_sizes(files, backbone, downstream_io, variant):
    info, net, _ = files[variant]
    assert info.kind == "backbone" and info.num_classes == 14
    x = torch.from_numpy(downstream_io["input"])
    assert max_abs(net(x), downstream_io["out"]) <= TOL
    x2 = torch.randn(2, 1, 48, 32, 64, generator=torch.Generator().manual_seed(5))  # other batch and size
    with torch.no_grad():
        assert max_abs(net(x2), backbone(x2)) <= TOL
    if variant == "onnx_backbone":
        assert info.dynamic_axes["x"] == {"0": "batch", "2": "16*d", "3": "32*h", "4": "32*w"}


def _sliding_window_case(name):
    with np.load(REF / "tiny_sliding_window_io.npz") as z:
        return torch.from_numpy(z[f"{name}/input"]), int(z[f"{name}/task_id"][0]), z[f"{name}/probabilities"], z[f"{name}/segmentation"]


def _same_segmentation_as_official(prob, ref_prob, ref_seg):
    top2 = np.sort(ref_prob, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 1e-4  # official ties excluded (REFERENCE_README)
    seg = prob.argmax(0).numpy()
    assert np.array_equal(seg[decided], ref_seg[decided]) and decided.mean() > 0.99


def test_onnx_graph_through_whole_volume_predictor(files, upstream):
    """ONNX graph in the sliding-window predictor (2 tiles, padding): official and eager segmentation."""
    from uniseg_hub.inference import UniSegPredictor, sliding_window_inference

    data, task, ref_prob, ref_seg = _sliding_window_case("vol_c2_t10_deep")
    net = files["onnx_fixed_t10"][1]
    prob = sliding_window_inference(data, upstream.config.patch_size, 2, net, task_id=task)
    eager = sliding_window_inference(data, upstream.config.patch_size, 2, upstream, task_id=task)
    assert max_abs(prob, eager) <= TOL and max_abs(prob, ref_prob) <= TOL
    _same_segmentation_as_official(prob, ref_prob, ref_seg)
    assert np.array_equal(prob.argmax(0).numpy(), eager.argmax(0).numpy())
    # the exported model is a drop-in for the scan-level predictor too
    predictor = UniSegPredictor(net, mirror=False, sw_batch_size=2)
    assert max_abs(predictor.predict_preprocessed(data, task), prob) <= 1e-6


def test_torchscript_graph_through_whole_volume_predictor(files, upstream):
    """TorchScript graph (task as input) in the sliding-window predictor: the eager segmentation (4 tiles)."""
    from uniseg_hub.inference import sliding_window_inference

    data, task, _, _ = _sliding_window_case("vol_c1_t3_mirror")
    net = files["ts_input_c1"][1]
    prob = sliding_window_inference(data, upstream.config.patch_size, 4, net, task_id=task)
    eager = sliding_window_inference(data, upstream.config.patch_size, 4, upstream, task_id=task)
    assert max_abs(prob, eager) <= TOL
    assert np.array_equal(prob.argmax(0).numpy(), eager.argmax(0).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["onnx_input_c1", "ts_input_c1"])
def test_exported_graph_with_mirroring_gives_official_segmentation(files, upstream, variant):
    """4 tiles x 8 mirror flips, against the official predict_3D output."""
    from uniseg_hub.inference import sliding_window_inference

    data, task, ref_prob, ref_seg = _sliding_window_case("vol_c1_t3_mirror")
    prob = sliding_window_inference(data, upstream.config.patch_size, 4, files[variant][1], task_id=task, mirror_axes=(0, 1, 2))
    assert max_abs(prob, ref_prob) <= TOL
    _same_segmentation_as_official(prob, ref_prob, ref_seg)


def test_verify_export_and_metadata_round_trip(files, upstream, backbone):
    for key, model in [("onnx_input_c1", upstream), ("ts_backbone", backbone), ("onnx_backbone", backbone)]:
        info, net, path = files[key]
        assert verify_export(path, model) <= TOL
        assert net.info == info and net.config == model.config
    assert json.loads(files["onnx_fixed_t10"][0].to_json())["task_name"] == "whole_body_tumor"


def test_verify_export_detects_a_different_network(files, upstream):
    other = UniSeg(upstream.config)  # random weights
    with pytest.raises(ValueError, match=r"differs from the eager model by .* \(expected ≤ 0.0001\)"):
        verify_export(files["onnx_input_c1"][1], other)


def test_export_errors_name_expected_and_found(upstream, backbone, files):
    with pytest.raises(ValueError, match=r"task 'whole_body_tumor' takes 2 channel\(s\) \(CT, PET\), got in_channels=1"):
        build_export_module(upstream, task=10, in_channels=1)
    with pytest.raises(ValueError, match=r"input stems for \[1, 2, 4\] channels, got in_channels=3"):
        build_export_module(upstream, in_channels=3)
    with pytest.raises(ValueError, match="unknown task 'lungs'"):
        build_export_module(upstream, task="lungs")
    with pytest.raises(ValueError, match="has no task prompt"):
        build_export_module(backbone, task=0)
    with pytest.raises(TypeError, match="needs a UniSeg or UniSegBackbone"):
        build_export_module(BackboneExport(backbone, 1))
    fixed, inputs, bb = files["onnx_fixed_t10"][1], files["onnx_input_c1"][1], files["ts_backbone"][1]
    with pytest.raises(ValueError, match=r"fixed to task 10 \(whole_body_tumor\), got task_id \[3\]"):
        fixed(torch.zeros(1, 2, 32, 64, 64), 3)
    with pytest.raises(ValueError, match=r"takes 2 input channel\(s\), got shape \(1, 1, 32, 64, 64\)"):
        fixed(torch.zeros(1, 1, 32, 64, 64))
    with pytest.raises(ValueError, match=r"exactly \(32, 64, 64\) \(D, H, W\), got \(32, 64, 96\)"):
        inputs(torch.zeros(1, 1, 32, 64, 96), 0)
    with pytest.raises(ValueError, match=r"takes the task as an input"):
        inputs(torch.zeros(1, 1, 32, 64, 64))
    with pytest.raises(ValueError, match=r"out of range: this model has 11 tasks"):
        inputs(torch.zeros(1, 1, 32, 64, 64), 11)
    with pytest.raises(ValueError, match=r"not a multiple of \(16, 32, 32\)"):
        bb(torch.zeros(1, 1, 16, 32, 40))


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_load_exported_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported model"):
        load_exported(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither a TorchScript archive nor a readable ONNX model"):
        load_exported(bad)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(plain))
    with pytest.raises(ValueError, match="without uniseg_hub export metadata"):
        load_exported(plain)
