"""Shared test fixtures: paths to the official reference fixtures and the tiny reference network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uniseg_hub import UniSeg, UniSegConfig, checkpoint_filter_fn
from uniseg_hub.weights import load_nnunet_v1_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
REF = FIXTURES / "uniseg_reference"
TINY_MODEL = REF / "tiny_upstream.model"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_config_json() -> dict:
    return json.loads((REF / "tiny_config.json").read_text())


@pytest.fixture(scope="session")
def tiny_config(tiny_config_json) -> UniSegConfig:
    """The tiny network's config, built from ``tiny_config.json`` (independent of the checkpoint reader)."""
    j = tiny_config_json
    return UniSegConfig.uniseg_11task(
        patch_size=j["patch_size"],
        base_num_features=j["base_num_features"],
        max_num_features=j["max_num_features"],
        pool_op_kernel_sizes=j["pool_op_kernel_sizes"],
        conv_kernel_sizes=j["conv_kernel_sizes"],
        conv_per_stage=j["conv_per_stage"],
        input_channels=j["input_channel_variants"],
        num_classes=j["num_classes"],
        num_tasks=j["num_tasks"],
    )


@pytest.fixture(scope="session")
def tiny_official_state() -> dict[str, torch.Tensor]:
    """The official-key state dict of ``tiny_upstream.model`` (read safely)."""
    state, _, _ = load_nnunet_v1_checkpoint(TINY_MODEL)
    return state


@pytest.fixture()
def tiny_model(tiny_config, tiny_official_state) -> UniSeg:
    """A fresh tiny UniSeg (eval mode) holding the official tiny checkpoint's weights."""
    model = UniSeg(tiny_config)
    model.load_state_dict(checkpoint_filter_fn(tiny_official_state, model), strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def upstream_io() -> dict[str, np.ndarray]:
    return load_npz(REF / "tiny_upstream_io.npz")


@pytest.fixture(scope="session")
def downstream_io() -> dict[str, np.ndarray]:
    return load_npz(REF / "tiny_downstream_btcv_io.npz")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` fixture, read into memory (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def max_abs(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, f"shape {a.shape} vs reference {b.shape}"
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
