"""Fast paths of whole-volume prediction against the plain one-window-one-flip path and the official fixture:
batched windows/mirrors, channels-last, autocast, the predictor's options, and the benchmark's naive baseline
(``benchmarks/predict.py``), which must itself reproduce the official ``predict_3D``."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest
import torch

from uniseg_hub import UniSeg

from uniseg_hub.inference import UniSegPredictor, sliding_window_inference
from uniseg_hub.inference.predictor import AUTO_COMPILE_VOXEL_FORWARDS, auto_compile_work

from .conftest import REF, max_abs

BENCH = REF.parents[2] / "benchmarks" / "predict.py"


@pytest.fixture(scope="module")
def sw_io() -> dict[str, np.ndarray]:
    with np.load(REF / "tiny_sliding_window_io.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_predict", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _case(tiny_config_json, name):
    return next(c for c in tiny_config_json["sliding_window_cases"] if c["name"] == name)


def test_batched_windows_and_mirrors_equal_sequential(tiny_model):
    """2 windows x 8 flips with sw_batch_size 3: a window's flips split across batches and a batch holding two
    windows (tests/test_inference.py checks sw_batch_size 3 against the official probabilities)."""
    torch.manual_seed(0)
    x = torch.randn(1, 20, 64, 80)  # padded to 32x64x80: 2 windows along W
    run = lambda bs: sliding_window_inference(  # noqa: E731
        x, tiny_model.config.patch_size, bs, tiny_model, task_id=3, mirror_axes=(0, 1, 2)
    )
    assert max_abs(run(3), run(1)) <= 1e-5


def test_naive_baseline_reproduces_official_predict_3d(bench, sw_io, tiny_config_json, tiny_model):
    """The benchmark's baseline is a faithful port (so its timings are the official algorithm's): the official
    probabilities of a 2-tile padded case, and our (fixture-tested) result with all 8 mirror flips."""
    name = "vol_c2_t10_deep"
    case = _case(tiny_config_json, name)
    k = tiny_model.config.num_classes
    naive = bench.naive_predict_3d(
        tiny_model, sw_io[f"{name}/input"], tiny_model.config.patch_size, k, int(case["task_id"]), 0.5, ()
    )
    assert naive.dtype == np.float32 and naive.shape == sw_io[f"{name}/probabilities"].shape
    assert max_abs(naive, sw_io[f"{name}/probabilities"]) <= 1e-4
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64, 64)
    naive = bench.naive_predict_3d(tiny_model, x.numpy(), tiny_model.config.patch_size, k, 5, 0.5, (0, 1, 2))
    ours = sliding_window_inference(x, tiny_model.config.patch_size, 8, tiny_model, task_id=5, mirror_axes=(0, 1, 2))
    assert max_abs(ours, naive) <= 1e-5


@pytest.mark.slow
def test_naive_baseline_mirroring_matches_official(bench, sw_io, tiny_config_json, tiny_model):
    name = "vol_c1_t3_mirror"  # padding in D, 4 tiles, 8-fold mirroring
    case = _case(tiny_config_json, name)
    naive = bench.naive_predict_3d(
        tiny_model, sw_io[f"{name}/input"], tiny_model.config.patch_size, tiny_model.config.num_classes,
        int(case["task_id"]), 0.5, tuple(case["mirror_axes"]),
    )
    assert max_abs(naive, sw_io[f"{name}/probabilities"]) <= 1e-4


def test_channels_last_equals_eager(sw_io, tiny_config_json, tiny_model):
    case = _case(tiny_config_json, "vol_c2_t10_deep")
    x = torch.from_numpy(sw_io["vol_c2_t10_deep/input"])
    eager = sliding_window_inference(x, tiny_model.config.patch_size, 2, tiny_model, task_id=int(case["task_id"]))
    net = tiny_model.to(memory_format=torch.channels_last_3d)
    fast = sliding_window_inference(x, net.config.patch_size, 2, net, task_id=int(case["task_id"]), channels_last=True)
    assert max_abs(fast, eager) <= 1e-4


def test_autocast_bf16_close_and_bad_dtype_rejected(tiny_model):
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64, 64)
    fp32 = sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=0)
    bf16 = sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=0, amp_dtype="bf16")
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16.sum(0), torch.ones(32, 64, 64))
    diff = max_abs(bf16, fp32)
    assert 0 < diff < 0.1  # bf16 keeps 8 mantissa bits: a documented approximate mode, not the eager result
    with pytest.raises(ValueError, match="amp_dtype must be"):
        sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=0, amp_dtype="int8")


def test_predictor_mirror_axes_and_options(tiny_model):
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64, 64)
    pred = UniSegPredictor(tiny_model, mirror_axes=(2,), sw_batch_size=2)
    direct = sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=3, mirror_axes=(2,))
    assert max_abs(pred.predict_preprocessed(x, 3), direct) <= 1e-5
    no_mirror = UniSegPredictor(tiny_model, mirror=False, mirror_axes=(2,)).predict_preprocessed(x, 3)
    assert max_abs(no_mirror, sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=3)) <= 1e-5
    assert max_abs(no_mirror, direct) > 1e-4  # mirroring W does change the result
    with pytest.raises(ValueError, match="mirror_axes must be spatial axes"):
        UniSegPredictor(tiny_model, mirror_axes=(3,))
    with pytest.raises(ValueError, match="amp_dtype must be"):
        UniSegPredictor(tiny_model, amp="fp8")


def test_predictor_optimize_equals_eager(tiny_model):
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64, 64)
    eager = sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=2)
    keys = list(tiny_model.state_dict())
    pred = UniSegPredictor(tiny_model, mirror=False, optimize=True)  # an optimized copy of tiny_model
    assert list(pred.model.state_dict()) == keys
    assert pred.model is not tiny_model and {type(m) for m in tiny_model.modules()} == {type(m) for m in UniSeg(tiny_model.config).modules()}
    assert max_abs(pred.predict_preprocessed(x, 2), eager) <= 1e-5


def test_compile_falls_back_to_eager(tiny_model, monkeypatch, caplog):
    """A backend that cannot compile must not break prediction: eager result, one warning."""

    def failing_compile(model, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64, 64)
    pred = UniSegPredictor(tiny_model, mirror=False, optimize=False, compile=True)  # compile alone: its fallback is the eager net
    with caplog.at_level(logging.WARNING, logger="uniseg_hub.inference"):
        out = pred.predict_preprocessed(x, 0)
    assert "torch.compile failed" in caplog.text and "no C++ compiler" in caplog.text
    eager = sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=0)
    assert max_abs(out, eager) <= 1e-6


def test_auto_compile_work_counts_windows_flips_and_voxels():
    """The quantity ``compile="auto"`` thresholds, on the benchmark's BTCV-like CT (83x273x273 at 64x192x192, step
    0.5: 2x2x2 windows) and on a volume smaller than the patch (padded: one window)."""
    full = 64 * 192 * 192
    assert auto_compile_work((83, 273, 273), (64, 192, 192), 0.5, ()) == 8 * full
    assert auto_compile_work((83, 273, 273), (64, 192, 192), 0.5, (2,)) == 16 * full
    assert auto_compile_work((83, 273, 273), (64, 192, 192), 0.5, (0, 1, 2)) == 64 * full
    assert auto_compile_work((10, 20, 20), (64, 192, 192), 0.5, (0, 1, 2)) == 8 * full
    assert auto_compile_work((300, 512, 512), (64, 192, 192), 0.5, (0, 1, 2)) == 9 * 5 * 5 * 8 * full
    # the rule (constant's comment): the measured break-even, between the benchmark CT with the official 8-fold
    # mirroring (64 forwards: eager) and 11 windows with it (88 forwards: compiled)
    assert 64 * full < AUTO_COMPILE_VOXEL_FORWARDS <= 88 * full


@pytest.mark.parametrize("threshold, compiles", [(None, False), (1, True)], ids=["short-job", "long-job"])
def test_auto_compile_decides_at_the_first_volume(tiny_model, monkeypatch, caplog, threshold, compiles):
    """``compile="auto"`` compiles only a job at or above the threshold (here a failing compiler stands in for
    inductor: the attempt is visible, and the result stays the eager network's)."""
    import uniseg_hub.inference.predictor as predictor_mod

    calls = []

    def failing_compile(fn, **kwargs):
        calls.append(kwargs)

        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(predictor_mod, "_HAS_CXX", True)
    if threshold is not None:
        monkeypatch.setattr(predictor_mod, "AUTO_COMPILE_VOXEL_FORWARDS", threshold)
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64, 64)
    pred = UniSegPredictor(tiny_model, mirror=False)
    assert pred.compile == "auto" and "decided at the first volume" in pred.path
    with caplog.at_level(logging.WARNING, logger="uniseg_hub.inference"):
        out = pred.predict_preprocessed(x, 0)
    assert pred.compile is compiles and bool(calls) is compiles
    eager = sliding_window_inference(x, tiny_model.config.patch_size, 1, tiny_model, task_id=0)
    assert max_abs(out, eager) <= 1e-5  # the optimized copy (eager after the failed compile) against the eager net
