"""``uniseg-hub export``: the official tiny checkpoint in, a checked graph out; errors in one line."""

from __future__ import annotations

import pytest
import torch

from uniseg_hub.cli import main
from uniseg_hub.export import load_exported

from .conftest import TINY_MODEL, max_abs


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_cli_exports_a_fixed_task_torchscript_graph_that_matches_official(tmp_path, upstream_io, caplog):
    out = tmp_path / "liver.pt"
    with caplog.at_level("INFO"):
        assert main(["export", "torchscript", "--weights", str(TINY_MODEL), "--task", "liver", str(out)]) == 0
    assert "matches the eager model: max abs difference" in caplog.text  # the post-export check ran
    net = load_exported(out)
    assert (net.info.kind, net.info.task_id, net.info.task_name, net.info.in_channels) == ("task_fixed", 0, "liver", 1)
    x = torch.from_numpy(upstream_io["c1_b1_t0/input"])
    assert max_abs(net(x), upstream_io["c1_b1_t0/out"]) <= 1e-4


def test_cli_exports_onnx_with_the_task_as_input(tmp_path, upstream_io):
    out = tmp_path / "uniseg.onnx"
    assert main(["export", "onnx", "--weights", str(TINY_MODEL), "--channels", "1", "--opset", "18", str(out)]) == 0
    net = load_exported(out)
    assert (net.info.kind, net.info.opset, net.info.input_names) == ("task_input", 18, ["x", "task_id"])
    x, t = torch.from_numpy(upstream_io["c1_b1_t7/input"]), torch.from_numpy(upstream_io["c1_b1_t7/task_id"])
    assert max_abs(net(x, t), upstream_io["c1_b1_t7/out"]) <= 1e-4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "lungs"], "unknown task 'lungs'"),
        (["--task", "brain_tumor", "--channels", "1"], "task 'brain_tumor' takes 4 channel(s) (T1, T1ce, T2, FLAIR), got in_channels=1"),
        (["--channels", "3"], "input stems for [1, 2, 4] channels, got in_channels=3"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "x.onnx"
    assert main(["export", "onnx", "--weights", str(TINY_MODEL), *argv, str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniseg-hub export: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_cli_rejects_opset_for_torchscript(tmp_path, capsys):
    assert main(["export", "torchscript", "--weights", str(TINY_MODEL), "--opset", "17", str(tmp_path / "m.pt")]) == 1
    assert "--opset applies to ONNX export only" in capsys.readouterr().err
