"""State-dict layout: official key names/shapes load strictly, parameter counts equal the official network."""

from __future__ import annotations

import json

import pytest
import torch

from uniseg_hub import UniSeg, UniSegBackbone, UniSegConfig, checkpoint_filter_fn, create_model, list_models, to_official_state_dict
from uniseg_hub.models.uniseg import is_official_state_dict

from .conftest import REF


def _keys(path):
    data = json.loads((REF / path).read_text())
    return data, [(k, s) for k, s, _ in data["keys"]]


def test_full_upstream_has_official_keys_shapes_and_parameter_count():
    data, expected = _keys("upstream_full_keys.json")
    model = UniSeg(UniSegConfig.uniseg_11task())
    official = to_official_state_dict(model)
    assert [(k, list(v.shape)) for k, v in official.items()] == expected  # same keys, shapes and order
    assert len(official) == 115 == data["num_state_entries"]
    assert sum(p.numel() for p in model.parameters()) == 32_114_381 == data["num_parameters"]
    assert not list(model.buffers())
    assert all(v.dtype == torch.float32 for v in official.values())


@pytest.mark.parametrize("name,preset,classes", [("btcv", UniSegConfig.btcv, 14), ("vs", UniSegConfig.vs, 2)])
def test_downstream_backbones_have_official_keys(name, preset, classes):
    data, expected = _keys(f"downstream_{name}_keys.json")
    model = UniSegBackbone(preset())
    assert model.num_classes == classes == data["config"]["num_classes"]
    official = to_official_state_dict(model)
    assert [(k, list(v.shape)) for k, v in official.items()] == expected
    assert sum(p.numel() for p in model.parameters()) == data["num_parameters"]


def test_official_state_dict_round_trips_through_filter():
    model = UniSeg(UniSegConfig.uniseg_11task(base_num_features=4, patch_size=[32, 64, 64]))
    official = to_official_state_dict(model)
    assert is_official_state_dict(official)
    ours = checkpoint_filter_fn(official, model)
    assert ours.keys() == model.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
    # native dicts pass through unchanged; DataParallel's "module." prefix is removed
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()
    prefixed = {f"module.{k}": v for k, v in official.items()}
    assert checkpoint_filter_fn(prefixed, model).keys() == model.state_dict().keys()


def test_fixture_checkpoint_loads_strictly_and_foreign_keys_are_reported(tiny_config, tiny_official_state):
    model = UniSeg(tiny_config)
    state = checkpoint_filter_fn(tiny_official_state, model)
    model.load_state_dict(state, strict=True)
    extra = dict(tiny_official_state, **{"seg_outputs.5.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="seg_outputs.5.weight"):
        model.load_state_dict(checkpoint_filter_fn(extra, model), strict=True)


def test_registry_builds_presets():
    assert {"uniseg_11task", "uniseg_btcv", "uniseg_vs"} <= set(list_models())
    model = create_model("uniseg_vs", base_num_features=4)
    assert isinstance(model, UniSegBackbone) and model.num_classes == 2
    with pytest.raises(ValueError, match="unknown model 'nope'; available"):
        create_model("nope")
