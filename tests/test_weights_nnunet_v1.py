"""The safe reader of official nnU-Net v1 checkpoints: fixture contents, refused payloads, clear errors."""

from __future__ import annotations

import builtins
import pickle
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from uniseg_hub import LoadError, from_pretrained
from uniseg_hub.weights import CheckpointError, load_nnunet_v1_checkpoint, read_plans_pickle
from uniseg_hub.weights.nnunet_v1 import SAFE_NUMPY_GLOBALS

from .conftest import REF, TINY_MODEL


class _Payload:
    """Unpickling this creates ``marker`` (what an attacker's code would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _official(tmp_path, name="ckpt.model", with_pkl=True):
    """A writable copy of the tiny official checkpoint dict (read safely) + its plans file."""
    with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
        ckpt = torch.load(TINY_MODEL, weights_only=True)
    path = tmp_path / name
    if with_pkl:
        shutil.copyfile(str(TINY_MODEL) + ".pkl", str(path) + ".pkl")
    return ckpt, path


def test_reads_fixture_checkpoint_and_derives_config(tiny_config, tiny_config_json):
    state, config, meta = load_nnunet_v1_checkpoint(TINY_MODEL)
    assert len(state) == 115 and all(isinstance(v, torch.Tensor) for v in state.values())
    assert meta["epoch"] == tiny_config_json["checkpoint"]["epoch"] == 2 and meta["name"] == "UniSeg_Trainer"
    # the config derived from the .pkl plans + state shapes equals the one built from tiny_config.json
    assert config.to_dict() == tiny_config.to_dict()
    assert [t.num_classes for t in config.tasks] == [3, 3, 3, 3, 2, 2, 2, 2, 2, 4, 2]
    assert config.preprocessing.spacing == [3.0, 1.5, 1.5]


def test_plans_pickle_is_read_without_code():
    info = read_plans_pickle(str(TINY_MODEL) + ".pkl")
    assert info["name"] == "UniSeg_Trainer" and isinstance(info["class"], str)
    assert int(info["plans"]["num_classes"]) == 3
    assert isinstance(info["plans"]["plans_per_stage"][0]["patch_size"], np.ndarray)


def test_model_with_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ckpt, path = _official(tmp_path)
    ckpt["plot_stuff"] = _Payload(marker)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="refusing to load .*pickled code is never executed"):
        load_nnunet_v1_checkpoint(path)
    with pytest.raises(CheckpointError, match="refusing"):
        from_pretrained(path)
    assert not marker.exists()
    # the payload is real: an unsafe torch.load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plans_pickle_with_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _, path = _official(tmp_path, with_pkl=False)
    shutil.copyfile(TINY_MODEL, path)
    payload = pickle.dumps({"init": (), "name": "UniSeg_Trainer", "plans": _Payload(marker)})
    (tmp_path / "ckpt.model.pkl").write_bytes(payload)
    with pytest.raises(CheckpointError, match="refusing to unpickle global 'io.open'"):
        load_nnunet_v1_checkpoint(path)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is real
    assert marker.exists()


def test_truncated_files_give_one_clear_error(tmp_path):
    data = TINY_MODEL.read_bytes()
    path = tmp_path / "cut.model"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint .*truncated"):
        load_nnunet_v1_checkpoint(path)
    pkl = (REF / "tiny_upstream.model.pkl").read_bytes()
    (tmp_path / "ok.model.pkl").write_bytes(pkl[: len(pkl) // 2])
    shutil.copyfile(TINY_MODEL, tmp_path / "ok.model")
    with pytest.raises(CheckpointError, match="not a readable nnU-Net v1 plans pickle .*truncated"):
        load_nnunet_v1_checkpoint(tmp_path / "ok.model")


def test_foreign_checkpoints_are_named(tmp_path):
    net2d = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    plain = tmp_path / "resnet_like.pth"
    torch.save(net2d.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not an nnU-Net v1 checkpoint: expected a dict with 'state_dict'"):
        load_nnunet_v1_checkpoint(plain)
    wrapped = tmp_path / "wrapped.model"
    torch.save({"state_dict": net2d.state_dict(), "epoch": 1}, wrapped)
    with pytest.raises(CheckpointError, match="holds no UniSeg network: expected the multi-stem keys"):
        load_nnunet_v1_checkpoint(wrapped)
    garbage = tmp_path / "notes.model"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        from_pretrained(garbage)


def test_plans_pickle_of_wrong_shape(tmp_path):
    shutil.copyfile(TINY_MODEL, tmp_path / "a.model")
    (tmp_path / "a.model.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="expected a dict with a 'plans' entry, got list"):
        load_nnunet_v1_checkpoint(tmp_path / "a.model")


def test_key_and_shape_mismatch_raise_with_names(tmp_path):
    ckpt, path = _official(tmp_path)
    sd = OrderedDict(ckpt["state_dict"])
    sd["seg_outputs.0.weight"] = torch.zeros(5, *sd["seg_outputs.0.weight"].shape[1:])
    ckpt["state_dict"] = sd
    torch.save(ckpt, path)
    with pytest.raises(LoadError, match=r"1 shape mismatch\(es\): decoder\.heads\.0\.weight checkpoint \(5,"):
        from_pretrained(path)
    model = from_pretrained(path, strict=False)  # opt-in: loads what fits, reports the rest
    assert list(model.load_report.mismatched) == ["decoder.heads.0.weight"]
    assert model.load_report.random_init == ["decoder.heads.0.weight"]

    ckpt, path = _official(tmp_path, "extra.model")
    ckpt["state_dict"]["some_other_net.weight"] = torch.zeros(3)
    torch.save(ckpt, path)
    with pytest.raises(LoadError, match=r"have no place in the model: \['some_other_net.weight'\]"):
        from_pretrained(path)


def test_numpy2_pickled_scalars_are_allowed(tmp_path):
    ckpt, path = _official(tmp_path)
    ckpt["plot_stuff"] = ([np.float32(0.5)], [np.float64(0.25)], [], [np.float64(0.1)])
    torch.save(ckpt, path)  # pickled under numpy 2: numpy._core.multiarray.scalar
    state, config, meta = load_nnunet_v1_checkpoint(path)
    assert len(state) == 115 and config is not None


def test_missing_plans_needs_a_config(tmp_path, tiny_config):
    shutil.copyfile(TINY_MODEL, tmp_path / "lonely.model")
    state, config, _ = load_nnunet_v1_checkpoint(tmp_path / "lonely.model")
    assert config is None and len(state) == 115
    with pytest.raises(CheckpointError, match="no companion plans file lonely.model.pkl"):
        from_pretrained(tmp_path / "lonely.model")
    model = from_pretrained(tmp_path / "lonely.model", config=tiny_config)
    assert model.load_report.ok and not model.load_report.random_init
