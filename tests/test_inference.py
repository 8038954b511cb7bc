"""Sliding-window predictor vs the official nnU-Net v1 ``predict_3D`` (tiny_sliding_window_io.npz), plus
analytic checks of window placement, weighting, mirroring, task handling and input checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from uniseg_hub import UniSegBackbone, UniSegConfig
from uniseg_hub.inference import (
    InferenceMemoryError,
    UniSegPredictor,
    contract_warnings,
    combined_label_offsets,
    compute_steps,
    gaussian_importance_map,
    sliding_window_inference,
    tasks_for_all,
)

from .conftest import REF, max_abs


@pytest.fixture(scope="module")
def sw_io() -> dict[str, np.ndarray]:
    with np.load(REF / "tiny_sliding_window_io.npz") as z:
        return {k: z[k] for k in z.files}


def _labels_equal_except_ties(probs: np.ndarray, pred: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> int:
    """Number of differing labels where the top-2 probabilities are NOT within ``tol`` (must be 0)."""
    top2 = np.sort(probs, axis=0)[-2:]
    tie = (top2[1] - top2[0]) <= tol
    return int(((pred != ref) & ~tie).sum())


def test_gaussian_matches_official(sw_io, tiny_config):
    g = gaussian_importance_map(tiny_config.patch_size)
    ref = sw_io["gaussian_importance_map"]
    assert g.dtype == torch.float32 and tuple(g.shape) == ref.shape
    np.testing.assert_allclose(g.numpy(), ref, rtol=1e-6, atol=0)
    assert float(g.max()) == 1.0 and float(g.min()) > 0


def test_steps_and_padding_match_official(tiny_config_json):
    patch = tiny_config_json["patch_size"]
    for case in tiny_config_json["sliding_window_cases"]:
        padded = [max(s, p) for s, p in zip(case["input_shape"][1:], patch)]
        assert padded == case["padded_shape"], case["name"]
        assert compute_steps(padded, patch, 0.5) == case["steps"], case["name"]
    # nnU-Net examples: evenly spread, rounded; one window when the size equals the patch
    assert compute_steps([128], [64], 0.5) == [[0, 32, 64]]
    assert compute_steps([100], [64], 0.5) == [[0, 18, 36]]
    assert compute_steps([64], [64], 0.5) == [[0]]
    with pytest.raises(ValueError, match="step"):
        compute_steps([100], [64], 0.0)


@pytest.mark.parametrize("name,sw_batch_size", [("vol_c1_t3_mirror", 3), ("vol_c2_t10_deep", 1)])
def test_sliding_window_matches_official(name, sw_batch_size, sw_io, tiny_config_json, tiny_model):
    case = next(c for c in tiny_config_json["sliding_window_cases"] if c["name"] == name)
    task = int(case["task_id"])
    probs = sliding_window_inference(
        torch.from_numpy(sw_io[f"{name}/input"]), tiny_model.config.patch_size, sw_batch_size, tiny_model,
        overlap=0.5, task_id=task, mirror_axes=case["mirror_axes"],
    )
    ref = sw_io[f"{name}/probabilities"]
    assert max_abs(probs, ref) <= 1e-4
    p = probs.numpy()
    assert _labels_equal_except_ties(p, p.argmax(0), sw_io[f"{name}/segmentation"]) == 0
    k = tiny_config_json["task_classes"][str(task)]
    # class restriction: argmax over the task's first k channels (what nnUNet_predict writes)
    assert _labels_equal_except_ties(p[:k], p[:k].argmax(0), sw_io[f"{name}/segmentation_task_classes"]) == 0
    if name == "vol_c2_t10_deep":  # the unrestricted argmax predicts class 3, which task 10 does not have
        assert (sw_io[f"{name}/segmentation"] == 3).any() and p[:k].argmax(0).max() < k


class _Pointwise(torch.nn.Module):
    """Logits that depend on each voxel only (so the whole-volume softmax is known in closed form)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, :1]
        return torch.cat([a, -a, 0.5 * a**2 - 1], dim=1)


@pytest.mark.parametrize("mirror_axes,mode", [((), "gaussian"), ((0, 1, 2), "gaussian"), ((2,), "constant")])
def test_pointwise_network_gives_pointwise_softmax(mirror_axes, mode):
    torch.manual_seed(0)
    x = torch.randn(1, 23, 37, 18)  # smaller than the window along W, several windows along D and H
    out = sliding_window_inference(x, (8, 16, 24), 5, _Pointwise(), overlap=0.5, mode=mode, mirror_axes=mirror_axes)
    expected = torch.softmax(_Pointwise()(x[None]), dim=1)[0]
    assert out.shape == (3, 23, 37, 18)
    assert max_abs(out, expected) < 1e-6


def test_backbone_without_task_and_batched_input():
    cfg = UniSegConfig.btcv(
        patch_size=[16, 16, 16], pool_op_kernel_sizes=[[2, 2, 2]] * 2, conv_kernel_sizes=[[3, 3, 3]] * 3,
        base_num_features=2, num_classes=3,
    )
    net = UniSegBackbone(cfg).eval()
    x = torch.randn(1, 1, 20, 40, 30)
    out = sliding_window_inference(x, cfg.patch_size, 2, net, overlap=0.5)
    assert out.shape == (1, 3, 20, 40, 30)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 20, 40, 30))


def test_memory_limit_error_names_sw_batch_size():
    x = torch.zeros(1, 40, 40, 40)
    with pytest.raises(InferenceMemoryError, match="lower sw_batch_size"):
        sliding_window_inference(x, (16, 16, 16), 4, _Pointwise(), memory_limit_gb=1e-4)


def test_combined_labels_match_official_table():
    # the official couple_id table of nnunet/inference/predict.py (task id -> combined labels)
    official = {0: [1, 2], 1: [3, 4], 2: [5, 6], 3: [7, 8], 4: [9], 5: [10], 6: [11], 7: [12], 8: [13],
                9: [14, 15, 16], 10: [17]}
    cfg = UniSegConfig.uniseg_11task()
    offsets = combined_label_offsets(cfg)
    for tid, labels in official.items():
        assert [offsets[tid] + c - 1 for c in range(1, cfg.tasks[tid].num_classes)] == labels
    assert tasks_for_all(cfg, 1) == list(range(8))  # CT: the 8 CT tasks, as the official -task_id -1
    assert tasks_for_all(cfg, 1, "MR") == [8]
    assert tasks_for_all(cfg, 4) == [9]
    assert tasks_for_all(cfg, 2, "CT,PET") == [10]
    with pytest.raises(ValueError, match="no task takes 3"):
        tasks_for_all(cfg, 3)


def test_task_resolution_errors(tiny_model):
    pred = UniSegPredictor(tiny_model, mirror=False)
    assert pred.resolve_tasks("liver", 1) == [0] and pred.resolve_tasks("10", 2) == [10]
    with pytest.raises(ValueError, match="unknown task 'livr'"):
        pred.resolve_tasks("livr", 1)
    with pytest.raises(ValueError, match="takes 2 input file"):
        pred.resolve_tasks("whole_body_tumor", 1)
    with pytest.raises(ValueError, match="out of range"):
        pred.resolve_tasks(11, 1)


def test_check_input_warnings(tiny_config):
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 1500, (1, 20, 30, 30)).astype(np.float32)
    mr = rng.uniform(0, 800, (1, 20, 30, 30)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert contract_warnings(tiny_config, ct, (3.0, 1.5, 1.5), "liver") == []
    with pytest.warns(UserWarning, match="looks like CT"):
        contract_warnings(tiny_config, ct, (3.0, 1.5, 1.5), "prostate")
    with pytest.warns(UserWarning, match="no values below -200"):
        contract_warnings(tiny_config, mr, (3.0, 1.5, 1.5), "liver")
    with pytest.warns(UserWarning, match="far from the model"):
        contract_warnings(tiny_config, ct, (10.0, 0.3, 0.3), "liver")
    with pytest.warns(UserWarning, match="expects 2 channel"):
        contract_warnings(tiny_config, ct, (3.0, 1.5, 1.5), 10)
