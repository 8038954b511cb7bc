"""Huge pages for PyTorch's CPU allocator, on by default (``uniseg_hub._hugepages``): checked in fresh processes,
since PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from uniseg_hub._hugepages import ENV, kernel_mode

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, os, sys
{before}
import uniseg_hub, torch
from uniseg_hub._hugepages import huge_pages_active
from uniseg_hub.inference import UniSegPredictor
model = uniseg_hub.UniSegBackbone(uniseg_hub.UniSegConfig.btcv(base_num_features=4, patch_size=[32, 64, 64],
                                                                input_channels=[1]))
pred = UniSegPredictor(model, compile=False)
print(json.dumps({{"env": os.environ.get("THP_MEM_ALLOC_ENABLE"), "active": huge_pages_active(), "path": pred.path}}))
"""


def _probe(before: str = "", **env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k != ENV}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
                         env=full, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch's THP switch is Linux-only")


def test_import_turns_huge_pages_on_and_the_predictor_says_so():
    got = _probe()
    assert got["env"] == "1"
    mode = kernel_mode()
    assert got["active"] is (mode in ("always", "madvise")), (mode, got)
    assert ("huge pages on" in got["path"]) is got["active"]


def test_an_existing_setting_is_kept():
    got = _probe(**{ENV: "0"})
    assert got["env"] == "0"
    # with the kernel in "always" mode every large mapping gets huge pages anyway; in "madvise" mode only PyTorch's
    # madvise gives them, and the 0 turned that off
    if kernel_mode() == "madvise":
        assert got["active"] is False and "huge pages off (set THP_MEM_ALLOC_ENABLE=1" in got["path"]


def test_too_late_when_torch_allocated_first():
    got = _probe(before="import torch; torch.ones(3)")
    assert got["env"] == "1"  # set, but PyTorch had already read it
    if kernel_mode() == "madvise":
        assert got["active"] is False
