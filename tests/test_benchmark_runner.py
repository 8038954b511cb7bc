"""The BTCV / VS benchmark runner end to end on tiny real-scan data sets (MNI152 in the public layouts), with the
official tiny UniSeg checkpoint as upstream weights."""

from __future__ import annotations

import json
import math

import pytest

from uniseg_hub.cli import main
from uniseg_hub.cli.benchmark import format_markdown, run_benchmark
from uniseg_hub.data import official_split
from uniseg_hub.training import TrainConfig

from .conftest import TINY_MODEL
from .test_data_readers import NILEARN, write_btcv, write_vs

pytestmark = pytest.mark.skipif(NILEARN is None, reason="nilearn's bundled MNI152 data is not installed")

TINY_RECIPE = dict(epochs=1, iterations_per_epoch=2, batch_size=1, augment=False, progress=False, seed=0)


def test_btcv_layout_end_to_end(tmp_path):
    train, val = official_split("btcv")
    write_btcv(tmp_path / "data", {int(train[0][4:]): 6, int(train[1][4:]): 6, int(val[0][4:]): 6})
    result = run_benchmark("btcv", tmp_path / "data", str(TINY_MODEL), strategy="official", from_scratch=True,
                           train_config=TrainConfig(**TINY_RECIPE), output_dir=tmp_path / "out", max_train=2, max_val=1)
    assert result["cases"] == {"train": train[:2], "val": val[:1]}
    assert result["plan"]["spacing"] == pytest.approx([6.0, 6.0, 6.0])
    assert len(result["classes"]) == 13 and result["classes"][0] == "spleen"
    assert set(result["runs"]) == {"pretrained", "from_scratch"}
    for run in result["runs"].values():
        assert set(run["dice"]) == set(result["classes"])
        assert run["wall_time_s"] > 0 and run["peak_memory_mb"] > 0
        finite = [v for v in run["dice"].values() if not math.isnan(v)]
        assert finite and all(0.0 <= v <= 1.0 for v in finite)
    assert "96 matched, 1 adapted" in result["runs"]["pretrained"]["load_report"]  # the official 97-key transfer
    assert result["runs"]["from_scratch"]["load_report"] == "random initialisation"
    on_disk = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert on_disk["runs"]["pretrained"]["mean_dice"] == pytest.approx(result["runs"]["pretrained"]["mean_dice"], nan_ok=True)
    md = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| spleen |" in md and "| **mean** |" in md and "from_scratch" in md
    assert (tmp_path / "out" / "pretrained" / "checkpoint_latest.pt").is_file()
    assert result["runs"]["pretrained"]["model_dir"] == str(tmp_path / "out" / "pretrained" / "final")
    assert result["runs"]["pretrained"]["validation"].startswith("UniSegPredictor on the raw files")
    from uniseg_hub import from_pretrained

    loaded = from_pretrained(tmp_path / "out" / "from_scratch")  # a run folder loads its final/ model
    assert loaded.config.tasks[0].name == "BTCV" and loaded.config.tasks[0].class_names == result["classes"]
    assert loaded.config.preprocessing.spacing == pytest.approx([6.0, 6.0, 6.0])
    assert (tmp_path / "out" / "from_scratch" / "log.json").is_file()


def test_vs_layout_through_the_cli(tmp_path, caplog):
    train, val = official_split("vs")
    write_vs(tmp_path / "data", {train[0]: 6, val[0]: 6})
    out = tmp_path / "out"
    rc = main(["benchmark", "vs", "--data", str(tmp_path / "data"), "--weights", str(TINY_MODEL), "--epochs", "1",
               "--iterations", "1", "--batch-size", "1", "--max-train", "1", "--max-val", "1", "--no-progress",
               "-o", str(out), "--device", "cpu"])
    assert rc == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert result["dataset"] == "VS" and result["classes"] == ["vestibular schwannoma"]
    assert result["cases"] == {"train": train[:1], "val": val[:1]}
    assert list(result["plan"]["normalization"]) == ["MR"] and result["plan"]["normalization"]["MR"]["scheme"] == "zscore"
    assert list(result["runs"]) == ["pretrained"]


def test_missing_data_names_expected_files(tmp_path, capsys):
    write_btcv(tmp_path, {1: 6})
    rc = main(["benchmark", "btcv", "--data", str(tmp_path), "--weights", str(TINY_MODEL), "--max-train", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    assert str(tmp_path / "RawData/Training/img/img0002.nii.gz") in err
    assert str(tmp_path / "RawData/Training/label/label0002.nii.gz") in err
    assert "RawData/Training/img/imgNNNN.nii.gz" in err


def test_markdown_table_from_a_result():
    runs = {
        "pretrained": {"dice": {"a": 0.5, "b": float("nan")}, "hd95": {"a": 3.0, "b": float("nan")}, "mean_dice": 0.5,
                       "mean_hd95": 3.0, "wall_time_s": 12.0, "peak_memory_mb": 900.0, "epochs": 2},
        "from_scratch": {"dice": {"a": 0.25, "b": 0.0}, "hd95": {"a": 7.5, "b": float("nan")}, "mean_dice": 0.125,
                         "mean_hd95": 7.5, "wall_time_s": 11.0, "peak_memory_mb": 800.0, "epochs": 2},
    }
    res = {"dataset": "BTCV", "strategy": "official", "weights": "w", "classes": ["a", "b"], "runs": runs,
           "cases": {"train": ["bcv_1"], "val": ["bcv_32"]}, "plan": {"spacing": [3, 1, 1]}, "machine": "cpu"}
    md = format_markdown(res)
    assert "| a | 0.500 | 0.250 | 3.00 | 7.50 |" in md
    assert "| b | – | 0.000 | – | – |" in md
    assert "| **mean** | **0.500** | **0.125** | **3.00** | **7.50** |" in md
    assert "| pretrained | 2 | 12.0 | 900 |" in md



@pytest.mark.parametrize("strategy", ["official", "keep-prompt"])
def test_from_scratch_baseline_is_the_same_architecture_at_random_init(strategy):
    import torch

    from uniseg_hub.models.adapters import from_upstream
    from uniseg_hub.cli.benchmark import _fresh_copy

    pre = from_upstream(str(TINY_MODEL), num_classes=14, in_channels=1, strategy=strategy)
    fresh = _fresh_copy(pre, seed=0)
    assert type(fresh) is type(pre) and fresh.config.replace(provenance={}) == pre.config.replace(provenance={})
    assert fresh.config.provenance["transfer"]["strategy"].startswith("from scratch")
    assert fresh.config.default_task == pre.config.default_task and fresh.config.tasks == pre.config.tasks
    a, b = pre.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    key = "encoder.stages.1.0.conv.weight"  # a pretrained (matched) tensor
    assert not torch.equal(a[key], b[key])
    assert all(p.requires_grad for p in fresh.parameters())
