"""Transfer adapters against the official downstream transfer fixture, and the two prompt strategies."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from uniseg_hub import UniSeg, UniSegBackbone, UniSegConfig, official_key_map
from uniseg_hub.models.adapters import adapt_stem_weight, freeze_encoder, from_upstream, layer_groups, param_groups
from uniseg_hub.weights.report import LoadReport

from .conftest import REF, TINY_MODEL, max_abs

TRANSFER = json.loads((REF / "tiny_downstream_btcv_transfer.json").read_text())


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()


def _sgd_step(model, x, task=None, lr=0.1):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    out = model(x) if task is None else model(x, task)
    sum(o.float().pow(2).mean() for o in (out if isinstance(out, list) else [out])).backward()
    opt.step()


@pytest.mark.parametrize("source", ["instance", "path"])
def test_official_transfer_reproduces_fixture(source, tiny_model, downstream_io):
    down = from_upstream(tiny_model if source == "instance" else str(TINY_MODEL), num_classes=14)
    assert isinstance(down, UniSegBackbone) and down.num_classes == 14
    keymap = official_key_map(down)
    assert sorted(keymap.values()) == sorted(TRANSFER["state_sha256"])
    state = down.state_dict()
    new_heads = set(TRANSFER["downstream_not_loaded"])
    for ours, official in keymap.items():
        if official not in new_heads:
            assert _sha(state[ours]) == TRANSFER["state_sha256"][official], official
    # the load report names exactly what the official transfer did
    rep: LoadReport = down.load_report
    upstream_keys = official_key_map(tiny_model)
    assert sorted(upstream_keys[k] for k in rep.dropped) == sorted(TRANSFER["upstream_not_used"])
    assert sorted(keymap[k] for k in rep.random_init) == sorted(new_heads)
    assert [keymap[k] for k in rep.adapted] == list(TRANSFER["trimmed"])
    assert len(rep.matched) + len(rep.adapted) == len(TRANSFER["transferred"])
    # with the official heads the downstream network reproduces the official outputs and features
    with torch.no_grad():
        for u in range(5):
            down.decoder.heads[u].weight.copy_(torch.from_numpy(downstream_io[f"state/seg_outputs_down.{u}.weight"]))
        down.eval()
        x = torch.from_numpy(downstream_io["input"])
        assert max_abs(down(x), downstream_io["out"]) < 1e-4
        for i, f in enumerate(down.encoder(x)):
            assert max_abs(f, downstream_io[f"skip{i}"]) < 1e-4
    for k, sha in TRANSFER["state_sha256"].items():  # the stored heads are the official ones
        if k in new_heads:
            ours = {v: q for q, v in keymap.items()}[k]
            assert _sha(down.state_dict()[ours]) == sha


def test_keep_prompt_adds_a_task_and_keeps_old_tasks(tiny_model, upstream_io):
    model = from_upstream(tiny_model, num_classes=6, strategy="keep-prompt")
    assert isinstance(model, UniSeg) and model.num_tasks == 12 and model.config.default_task == 11
    assert model.num_classes == 6 and model.config.tasks[11].num_classes == 6
    assert all(p.requires_grad for p in model.parameters())
    rep = model.load_report
    assert rep.ok and not rep.random_init and not rep.dropped and "prompt.prompt" in rep.adapted
    model.eval()
    with torch.no_grad():  # old tasks: the official upstream outputs, unchanged by the new task
        for case in ("c1_b1_t0", "c2_b1_t10"):
            x = torch.from_numpy(upstream_io[f"{case}/input"])
            out = model(x, torch.from_numpy(upstream_io[f"{case}/task_id"]))
            assert max_abs(out[:, :4], upstream_io[f"{case}/out"]) < 1e-4
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.from_numpy(upstream_io["c1_b1_t0/input"])
    _sgd_step(model, x, task=model.config.default_task)
    after = model.state_dict()
    for key in ("prompt.prompt", "prompt.fusion.0.conv.weight", "encoder.stages.0.0.convs.1.weight", "decoder.heads.4.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_prompt_tuning_trains_only_new_prompt_and_heads(tiny_model, upstream_io, tiny_config):
    model = from_upstream(tiny_model, num_classes=3, strategy="prompt-tuning")
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["decoder.heads.0.weight", "decoder.heads.1.weight", "decoder.heads.2.weight",
                         "decoder.heads.3.weight", "decoder.heads.4.weight", "prompt.prompt_new"]
    assert len(model.load_report.frozen) == sum(1 for n, _ in model.named_parameters() if not n.startswith("decoder.heads")) + 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert before["prompt.prompt"].shape[1] == 12
    x = torch.from_numpy(upstream_io["c1_b1_t0/input"])
    model.set_deep_supervision(True)  # every head takes part
    for _ in range(2):  # the prompt starts at zero: the second step moves it through the grown fusion layer
        _sgd_step(model, x, task=model.config.default_task, lr=1.0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"prompt.prompt"} | {f"decoder.heads.{u}.weight" for u in range(5)}
    assert torch.equal(before["prompt.prompt"][:, :11], after["prompt.prompt"][:, :11])  # old task maps frozen
    assert not torch.equal(before["prompt.prompt"][:, 11], after["prompt.prompt"][:, 11])
    # the checkpoint is a plain UniSeg state dict
    model.set_deep_supervision(False)
    plain = UniSeg(model.config)
    plain.load_state_dict(after, strict=True)
    plain.eval(), model.eval()
    with torch.no_grad():
        assert max_abs(plain(x, 11), model(x, 11)) == 0.0


def test_new_input_channels_adapt_the_nearest_stem(tiny_model):
    w4 = tiny_model.encoder.stages[0][0].convs["4"].weight.detach()
    g = torch.Generator().manual_seed(0)
    for c in (3, 8):
        w = adapt_stem_weight(w4, c)
        if c < 4:  # a 3-channel image, and the same image with channel 0 repeated as channel 3
            xc = torch.randn(1, c, 4, 6, 6, generator=g)
            x4 = xc[:, [i % c for i in range(4)]]
        else:  # a 4-channel image, and the same image tiled twice
            x4 = torch.randn(1, 4, 4, 6, 6, generator=g)
            xc = x4[:, [i % 4 for i in range(c)]]
        conv = torch.nn.functional.conv3d
        assert max_abs(conv(xc, w, padding=(0, 1, 1)), conv(x4, w4, padding=(0, 1, 1))) < 1e-5
    down = from_upstream(tiny_model, num_classes=2, in_channels=3)
    assert down.config.input_channels == [1, 2, 3, 4]
    assert "encoder.stages.0.0.convs.3.weight" in down.load_report.adapted
    assert down(torch.zeros(1, 3, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_prompt_strategy_new_patch_size_resizes_prompt(tiny_model):
    model = from_upstream(tiny_model, num_classes=2, strategy="keep-prompt", patch_size=[16, 64, 64])
    assert list(model.prompt.prompt.shape) == [1, 12, 1, 2, 2]
    assert model(torch.zeros(1, 1, 16, 64, 64), 11).shape == (1, 4, 16, 64, 64)


def test_freeze_encoder_freezes_weights_and_norm_statistics():
    cfg = UniSegConfig.btcv(base_num_features=2, patch_size=[16, 32, 32], num_classes=3, norm=("batch", {}))
    model = UniSegBackbone(cfg)
    model.load_report = LoadReport()
    changed = freeze_encoder(model)
    assert changed and all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert set(model.load_report.frozen) == {f"encoder.{n}" for n, _ in model.encoder.named_parameters()}
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(2, 1, 16, 32, 32) * 3 + 1)
    now = model.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in stats.items() if k.startswith("encoder."))
    assert any(not torch.equal(v, now[k]) for k, v in stats.items() if k.startswith("decoder."))
    freeze_encoder(model, False)
    model(torch.randn(2, 1, 16, 32, 32) * 3 + 1)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in stats.items() if k.startswith("encoder."))
    assert not model.load_report.frozen


def test_param_groups_layer_decay(tiny_model):
    down = from_upstream(tiny_model, num_classes=5)
    ids = layer_groups(down)
    assert ids["encoder.stages.0.0.convs.1.weight"] == 0
    assert ids["encoder.stages.5.1.conv.weight"] == 6
    assert ids["decoder.stages.0.upsample.weight"] == 7 and ids["decoder.heads.3.weight"] == 12
    groups = param_groups(down, lr=0.01, layer_decay=0.5)
    assert len(groups) == 13
    assert groups[-1]["lr"] == pytest.approx(0.01) and groups[0]["lr"] == pytest.approx(0.01 * 0.5**12)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in down.named_parameters())
    freeze_encoder(down)
    groups = param_groups(down, lr=0.01)
    assert all(not n.startswith("encoder.") for g in groups for n in g["param_names"])
    assert all(g["lr"] == 0.01 for g in groups)
    torch.optim.SGD(groups, lr=0.01, momentum=0.99, nesterov=True)  # accepted as is


def test_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="unknown transfer strategy"):
        from_upstream(tiny_model, 3, strategy="linear-probe")
    with pytest.raises(ValueError, match="num_classes"):
        from_upstream(tiny_model, 1)
    with pytest.raises(TypeError, match="UniSegBackbone"):
        from_upstream(UniSegBackbone(UniSegConfig.btcv(base_num_features=2)), 3)
    down = from_upstream(tiny_model, 3)
    for p in down.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        param_groups(down, 0.01)
