"""The fast paths of uniseg_hub.models.perf against the official reference outputs and the eager network."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from uniseg_hub import UniSeg, UniSegConfig, checkpoint_filter_fn
from uniseg_hub.models.layers import upsample_concat
from uniseg_hub.models.perf import (
    FastInstanceNorm3d,
    InplaceInstanceNormAct,
    PointwiseConv3d,
    is_compiled,
    optimize_for_inference,
    optimize_for_training,
    set_grad_checkpointing,
    try_compile,
)

from .conftest import max_abs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common as bench_common  # noqa: E402

TOL = 1e-4


@pytest.mark.parametrize("case", ["c1_b1_t0", "c2_b1_t10", "c4_b1_t9"])
def test_fast_inference_matches_official_outputs(tiny_model, upstream_io, case):
    fast = optimize_for_inference(copy.deepcopy(tiny_model))
    x = torch.from_numpy(upstream_io[f"{case}/input"])
    task = torch.from_numpy(upstream_io[f"{case}/task_id"])
    with torch.inference_mode():
        out = fast(x, task)
        eager = tiny_model(x, task)
    assert max_abs(out, upstream_io[f"{case}/out"]) <= TOL
    assert max_abs(out, eager) <= TOL


def test_fast_deep_supervision_and_channels_last_match_official(tiny_model, upstream_io):
    case = "c1_b1_t0"
    fast = optimize_for_inference(copy.deepcopy(tiny_model), channels_last=True)
    fast.set_deep_supervision(True)
    x = torch.from_numpy(upstream_io[f"{case}/input"]).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        outs = fast(x, 0)
    assert max_abs(outs[0], upstream_io[f"{case}/out"]) <= TOL
    for i in range(1, 5):
        assert max_abs(outs[i], upstream_io[f"{case}/ds{i}"]) <= TOL


def test_optimize_keeps_state_dict_keys_and_parameter_objects(tiny_model):
    keys = list(tiny_model.state_dict())
    params = {k: id(p) for k, p in tiny_model.named_parameters()}
    optimize_for_inference(tiny_model)
    assert list(tiny_model.state_dict()) == keys
    assert {k: id(p) for k, p in tiny_model.named_parameters()} == params
    kinds = {type(m) for m in tiny_model.modules()}
    assert FastInstanceNorm3d in kinds and PointwiseConv3d in kinds and nn.InstanceNorm3d not in kinds


def _step_grads(model: UniSeg, x: torch.Tensor, task) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    outs = model(x, task)
    sum(o.square().mean() * (i + 1) for i, o in enumerate(outs)).backward()
    return [o.detach() for o in outs], {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _small_config(**kw) -> UniSegConfig:
    """3 stages with a 4x8x8 bottleneck: instance norm is well conditioned, so float32 gradients are accurate.

    (The 5-stage tiny network has a 2x2x2 bottleneck, where float32 gradients already differ from float64 ones
    by ~1e-2 relative, too noisy to test a fast path against.)
    """
    return UniSegConfig.uniseg_11task(
        patch_size=[8, 32, 32], base_num_features=4, pool_op_kernel_sizes=[[1, 2, 2], [2, 2, 2]],
        conv_kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], **kw,
    )


def _assert_as_close_to_float64_as_eager(eager: UniSeg, candidate: UniSeg) -> None:
    """``candidate``'s outputs within TOL of a float64 copy of ``eager``, and its gradients as close to the
    float64 ones as eager's (twice eager's error, or 1e-5 of the largest gradient)."""
    truth = copy.deepcopy(eager).double()
    x = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    out_t, grad_t = _step_grads(truth, x.double(), [3, 8])
    out_e, grad_e = _step_grads(eager, x, [3, 8])
    out_c, grad_c = _step_grads(candidate, x, [3, 8])
    assert max(max_abs(a, b) for a, b in zip(out_c, out_t)) <= TOL
    assert grad_c.keys() == grad_t.keys()
    scale = max(float(g.abs().max()) for g in grad_t.values())
    err_eager = max(max_abs(grad_e[k], grad_t[k]) for k in grad_t)
    err_candidate = max(max_abs(grad_c[k], grad_t[k]) for k in grad_t)
    assert err_candidate <= max(2 * err_eager, 1e-5 * scale)


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_fast_training_matches_float64_outputs_and_gradients(grad_checkpointing):
    torch.manual_seed(0)
    eager = UniSeg(_small_config(deep_supervision=True)).train()
    fast = optimize_for_training(copy.deepcopy(eager), grad_checkpointing=grad_checkpointing)
    assert fast.decoder.grad_checkpointing is grad_checkpointing and fast.encoder.grad_checkpointing is grad_checkpointing
    _assert_as_close_to_float64_as_eager(eager, fast)


def _trained_like_norms(model: nn.Module) -> nn.Module:
    """Affine norm parameters away from their initial ones/zeros, as after training."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm3d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("grad_checkpointing,channels_last", [(False, False), (True, False), (True, True)])
def test_inplace_norm_act_matches_float64_gradients(grad_checkpointing, channels_last):
    torch.manual_seed(0)
    eager = _trained_like_norms(UniSeg(_small_config(deep_supervision=True)).train())
    lowmem = optimize_for_training(
        copy.deepcopy(eager), inplace_norm_act=True, grad_checkpointing=grad_checkpointing, channels_last=channels_last
    )
    n_norms = sum(isinstance(m, nn.InstanceNorm3d) for m in eager.modules())
    assert sum(isinstance(m, InplaceInstanceNormAct) for m in lowmem.modules()) == n_norms
    assert list(lowmem.state_dict()) == list(eager.state_dict())
    _assert_as_close_to_float64_as_eager(eager, lowmem)


def test_inplace_norm_act_keeps_one_activation_per_block_and_falls_back_when_unsafe():
    torch.manual_seed(0)
    fast = optimize_for_training(_trained_like_norms(UniSeg(_small_config(deep_supervision=True)).train()))
    lowmem = optimize_for_training(copy.deepcopy(fast), inplace_norm_act=True)
    x = torch.randn(1, 1, 8, 32, 32)
    assert _saved_bytes(lowmem, x, distinct=True) < 0.7 * _saved_bytes(fast, x, distinct=True)
    # a zero norm weight makes (z - bias) / weight ill-posed: that layer computes the ordinary way, still exact
    with torch.no_grad():
        lowmem.encoder.stages[0][1].norm.weight[0] = 0.0
        fast.encoder.stages[0][1].norm.weight[0] = 0.0
    out_f, grad_f = _step_grads(fast, x, 0)
    out_l, grad_l = _step_grads(lowmem, x, 0)
    assert max(max_abs(a, b) for a, b in zip(out_l, out_f)) <= 1e-5
    scale = max(float(g.abs().max()) for g in grad_f.values())
    assert max(max_abs(grad_l[k], grad_f[k]) for k in grad_f) <= 1e-4 * scale
    with torch.inference_mode():  # inference: the ordinary computation, same outputs
        assert max(max_abs(a, b) for a, b in zip(lowmem.eval()(x, 0), fast.eval()(x, 0))) <= 1e-5


def _saved_bytes(model: UniSeg, x: torch.Tensor, distinct: bool = False) -> int:
    """Bytes of the tensors autograd keeps from a forward pass for the backward (activation memory); with
    ``distinct``, bytes of the distinct storages (a tensor saved by two nodes counts once)."""
    saved: list[int] = []
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, 0)
    sum(o.sum() for o in (out if isinstance(out, list) else [out])).backward()
    return sum(storages.values()) if distinct else sum(saved)


def test_grad_checkpointing_cuts_saved_activations_in_encoder_and_decoder():
    torch.manual_seed(0)
    model = UniSeg(_small_config()).train()
    x = torch.randn(1, 1, 8, 32, 32)
    plain = _saved_bytes(model, x)
    model.encoder.set_grad_checkpointing(True)
    encoder_only = _saved_bytes(model, x)
    set_grad_checkpointing(model, True)
    both = _saved_bytes(model, x)
    assert model.decoder.grad_checkpointing and model.encoder.grad_checkpointing
    assert both < encoder_only < plain
    assert both < 0.25 * plain
    with pytest.raises(ValueError, match="no encoder or decoder"):
        set_grad_checkpointing(nn.Linear(2, 2))


def test_checkpointing_levels_choose_what_is_stored():
    """``levels=1`` checkpoints only the full-resolution stages: more stored than every level, less than none."""
    torch.manual_seed(0)
    model = UniSeg(_small_config()).train()
    x = torch.randn(1, 1, 8, 32, 32)
    plain = _saved_bytes(model, x)
    set_grad_checkpointing(model, True, levels=1)
    level0 = _saved_bytes(model, x)
    set_grad_checkpointing(model, True)
    every = _saved_bytes(model, x)
    assert every < level0 < plain
    with pytest.raises(ValueError, match="levels"):
        model.set_grad_checkpointing(True, levels=0)


@pytest.mark.parametrize("setting", [dict(), dict(levels=2)])
def test_checkpointing_settings_leave_outputs_and_gradients_unchanged(setting):
    torch.manual_seed(0)
    plain = UniSeg(_small_config(deep_supervision=True)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True, **setting)
    x = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    out_p, grad_p = _step_grads(plain, x, [3, 8])
    out_c, grad_c = _step_grads(ckpt, x, [3, 8])
    assert max(max_abs(a, b) for a, b in zip(out_c, out_p)) == 0.0
    assert grad_c.keys() == grad_p.keys()
    assert max(max_abs(grad_c[k], grad_p[k]) for k in grad_p) <= 1e-6


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kernel", [(1, 2, 2), (2, 2, 2)])
def test_upsample_concat_equals_transposed_conv_then_cat(kernel, bias):
    up = nn.ConvTranspose3d(6, 3, kernel, kernel, bias=bias)
    x = torch.randn(2, 6, 3, 4, 5, requires_grad=True)
    skip = torch.randn(2, 3, 3 * kernel[0], 4 * kernel[1], 5 * kernel[2], requires_grad=True)
    ref = torch.cat([up(x), skip], dim=1)
    out = upsample_concat(up, x, skip)
    assert max_abs(out, ref) <= 1e-6
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, [x, skip, up.weight], g)
    grads = torch.autograd.grad(out, [x, skip, up.weight], g)
    assert max(max_abs(a, b) for a, b in zip(grads, grads_ref)) <= 1e-4


def test_fast_instance_norm_and_pointwise_conv_match_torch():
    norm = nn.InstanceNorm3d(5, affine=True, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
    fast = FastInstanceNorm3d.from_instance_norm(norm)
    assert fast.weight is norm.weight
    x = torch.randn(2, 5, 4, 6, 7) * 3 + 1
    assert max_abs(fast(x), norm(x)) <= 1e-5
    assert max_abs(fast(x.contiguous(memory_format=torch.channels_last_3d)), norm(x)) <= 1e-5
    conv = nn.Conv3d(5, 3, 1, bias=True)
    pw = PointwiseConv3d.from_conv(conv)
    assert pw.weight is conv.weight and pw.bias is conv.bias
    assert max_abs(pw(x), conv(x)) <= 1e-5
    with pytest.raises(ValueError, match="running statistics"):
        FastInstanceNorm3d.from_instance_norm(nn.InstanceNorm3d(5, track_running_stats=True))


def test_try_compile_falls_back_to_eager_on_failure(tiny_model, upstream_io):
    x = torch.from_numpy(upstream_io["c1_b1_t0/input"])
    ok = try_compile(tiny_model, (x, 0), backend="no_such_backend")
    assert ok is False
    with torch.inference_mode():
        assert max_abs(tiny_model(x, 0), upstream_io["c1_b1_t0/out"]) <= TOL


_HAS_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.skipif(not _HAS_CXX, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_network_matches_official_for_two_tasks_with_one_graph(tiny_config, tiny_official_state, upstream_io):
    """One compiled graph (inductor freezing) serves tasks 0 and 7: official outputs within 1e-4, and a single
    compilation for both task ids (the task reaches the graph as a tensor)."""
    torch._dynamo.reset()
    model = UniSeg(tiny_config)
    model.load_state_dict(checkpoint_filter_fn(tiny_official_state, model), strict=True)
    model = optimize_for_inference(model.eval(), compile=True)
    assert is_compiled(model)
    torch._dynamo.utils.counters.clear()
    with torch.inference_mode():
        for case in ("c1_b1_t0", "c1_b1_t7"):
            x = torch.from_numpy(upstream_io[f"{case}/input"])
            out = model(x, int(upstream_io[f"{case}/task_id"].reshape(-1)[0]))
            assert max_abs(out, upstream_io[f"{case}/out"]) <= TOL, case
    assert is_compiled(model)  # did not fall back
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert list(model.state_dict()) == list(UniSeg(tiny_config).state_dict())  # keys unchanged


@pytest.mark.skipif(not _HAS_CXX, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_frozen_network_notices_new_weights(tiny_model, upstream_io, caplog):
    """Freezing folds the weights into the graph: loading other weights afterwards must not give stale outputs."""
    torch._dynamo.reset()
    x = torch.from_numpy(upstream_io["c1_b1_t0/input"])
    model = optimize_for_inference(copy.deepcopy(tiny_model), compile=True, example_inputs=(x, 0))
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    with torch.inference_mode():
        expected = other(x, 0)
    model.load_state_dict(other.state_dict())
    with caplog.at_level(logging.WARNING, logger="uniseg_hub.models.perf"), torch.inference_mode():
        out = model(x, 0)
    assert max_abs(out, expected) <= 1e-4
    assert "changed after torch.compile froze them" in caplog.text and not is_compiled(model)


def test_benchmark_flop_count_matches_analytic_conv_count():
    conv = nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1), bias=False)
    x = torch.randn(2, 4, 3, 5, 7)
    total, by_op = bench_common.count_flops(lambda: conv(x))
    assert total == 2 * 4 * 6 * 9 * (2 * 3 * 5 * 7)  # 2 FLOPs per multiply-accumulate
    assert sum(by_op.values()) == total


def test_benchmark_helpers_time_table_and_json(tmp_path):
    calls = []
    times = bench_common.time_fn(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    with pytest.raises(ValueError, match="repeats"):
        bench_common.time_fn(lambda: None, repeats=0)
    text = bench_common.format_table([dict(variant="eager", median_s=1.23456, diff=None), dict(variant="fast", median_s=0.5)])
    lines = text.splitlines()
    assert lines[0].split() == ["variant", "median_s", "diff"] and lines[2].split() == ["eager", "1.235", "-"]
    assert lines[3].split() == ["fast", "0.500", "-"]
    path = bench_common.write_json(tmp_path / "sub" / "r.json", dict(env=bench_common.env_info(), x=float("nan"), d=torch.float32))
    data = json.loads(path.read_text())
    assert data["x"] is None and data["d"] == "torch.float32" and len(data["env"]["loadavg"]) == 3
    assert bench_common.max_abs_diff([torch.ones(2)], [torch.zeros(2)]) == 1.0


@pytest.mark.slow
def test_benchmark_scripts_run_on_tiny_sizes(tmp_path):
    import subprocess

    small = ["--patch", "16", "32", "64", "--base", "4", "--repeats", "1", "--warmup", "0"]
    fwd = tmp_path / "fwd.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "forward.py"), *small, "--batch", "1",
                    "--ceiling-spatial", "8", "16", "16", "--json", str(fwd)], check=True, capture_output=True)
    rows = json.loads(fwd.read_text())["results"]
    assert [r["variant"] for r in rows] == ["eager", "fast", "compile", "dynunet"]
    assert rows[1]["max_abs_diff"] <= 1e-3 and rows[2]["max_abs_diff"] <= 1e-3 and rows[0]["gflop"] > 0
    assert rows[2]["gflop"] == rows[0]["gflop"] and rows[2]["compile_s"] > 0
    tr = tmp_path / "train.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), *small, "--variants", "eager", "fast_ckpt",
                    "--json", str(tr)], check=True, capture_output=True)
    rows = json.loads(tr.read_text())["results"]
    # a 1x1x2 bottleneck makes float32 gradients noisy (see _small_config); exactness is tested above
    assert rows[1]["max_abs_diff_logits"] <= 1e-3 and rows[1]["max_rel_diff_grads"] <= 1e-2
    assert rows[1]["peak_rss_gib"] > 0 and rows[1]["median_s"] > 0
