"""torch.hub (hubconf.py, source="local") and timm entrypoints, checked against the official reference outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from uniseg_hub import UniSeg, UniSegBackbone, UniSegEncoder
from uniseg_hub.hub import uniseg_encoder

from .conftest import REF, TINY_MODEL, max_abs

ROOT = Path(__file__).resolve().parents[1]


def test_torch_hub_load_local_uniseg(upstream_io):
    model = torch.hub.load(str(ROOT), "uniseg", source="local", checkpoint=str(TINY_MODEL))
    assert isinstance(model, UniSeg) and model.load_report.ok and not model.load_report.random_init
    with torch.no_grad():
        out = model(torch.from_numpy(upstream_io["c1_b1_t0/input"]), 0)
    assert max_abs(out, upstream_io["c1_b1_t0/out"]) <= 1e-4
    # config overrides without weights build a random network of that shape
    small = torch.hub.load(str(ROOT), "uniseg", source="local", base_num_features=2, max_num_features=16,
                           patch_size=[32, 64, 64])
    assert small.config.stage_channels == [2, 4, 8, 16, 16, 16] and small.num_tasks == 11
    # shape-keeping overrides apply on top of weights
    ds = torch.hub.load(str(ROOT), "uniseg", source="local", checkpoint=str(TINY_MODEL), deep_supervision=True)
    assert ds.deep_supervision


def test_torch_hub_encoder_matches_official_features(upstream_io, downstream_io):
    enc = torch.hub.load(str(ROOT), "uniseg_encoder", source="local", checkpoint=str(TINY_MODEL))
    assert isinstance(enc, UniSegEncoder)
    rep = enc.load_report
    assert len(rep.matched) == len(enc.state_dict()) and not rep.random_init
    assert "prompt.prompt" in rep.dropped and any(k.startswith("decoder.") for k in rep.dropped)
    with torch.no_grad():
        feats = enc(torch.from_numpy(downstream_io["input"]))
    assert len(feats) == 6
    for i, f in enumerate(feats):
        assert max_abs(f, downstream_io[f"skip{i}"]) <= 1e-4, i
    assert max_abs(feats[-1], upstream_io["c1_b1_t0/bottleneck"]) <= 1e-4


def test_torch_hub_backbone_official_transfer(downstream_io):
    transfer = json.loads((REF / "tiny_downstream_btcv_transfer.json").read_text())
    bb = torch.hub.load(str(ROOT), "uniseg_backbone", source="local", checkpoint=str(TINY_MODEL), num_classes=14)
    assert isinstance(bb, UniSegBackbone) and bb.num_classes == 14
    assert len(bb.load_report.random_init) == len(transfer["downstream_not_loaded"])
    with torch.no_grad():
        feats = bb.encoder(torch.from_numpy(downstream_io["input"]))
    assert max_abs(feats[-1], downstream_io["skip5"]) <= 1e-4


def test_timm_create_model():
    timm = pytest.importorskip("timm")
    import uniseg_hub.timm_models  # noqa: F401  (registers the presets)

    assert {"uniseg_11task", "uniseg_btcv", "uniseg_vs"} <= set(timm.list_models("uniseg*"))
    enc = timm.create_model("uniseg_11task", pretrained=True, pretrained_cfg_overlay=dict(file=str(TINY_MODEL)),
                            features_only=True)
    ref = uniseg_encoder(checkpoint=TINY_MODEL)
    assert isinstance(enc, UniSegEncoder)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), ref.state_dict().values()))
    assert [f["num_chs"] for f in enc.feature_info] == [3, 6, 12, 24, 48, 96]
    assert enc.feature_info[1]["reduction"] == [1, 2, 2]  # anisotropic: why timm's FeatureInfo is not used
    vs = timm.create_model("uniseg_vs", base_num_features=2, max_num_features=16, patch_size=[32, 64, 64])
    assert isinstance(vs, UniSegBackbone) and vs.num_classes == 2
    full = timm.create_model("uniseg_11task", pretrained=True, pretrained_cfg_overlay=dict(file=str(TINY_MODEL)))
    assert isinstance(full, UniSeg) and full.load_report.ok
    with pytest.raises(ValueError, match="out_indices is not supported"):
        timm.create_model("uniseg_btcv", features_only=True, out_indices=(1, 2))
