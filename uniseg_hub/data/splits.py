"""The official UniSeg downstream splits (BTCV 21/9, VS 193/49) and their label maps.

``official_splits.json`` (package data) holds the train/val case lists of the official
``Downstream/splits_final_BTCV.pkl`` and ``splits_final_VS.pkl`` (BTCV: the fixed list in
``Convert_BTCV_to_nnUNet_dataset.py``; VS: the 80/20 cut after ``random.seed(1234); random.shuffle`` of the sorted
folder names in ``Convert_VSseg_to_nnUNet_dataset.py``), the label map and the case naming of each data set.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["DATASETS", "CASE_PATTERNS", "load_official_splits", "official_split", "dataset_labels", "validate_split"]

_SPLITS_FILE = Path(__file__).with_name("official_splits.json")

#: Data set name (as in the json) → expected (train, val) counts of the official split.
DATASETS: dict[str, tuple[int, int]] = {"BTCV": (21, 9), "VS": (193, 49)}

#: Case-name pattern of each data set (``bcv_N`` from ``imgNNNN``, ``vs_gk_N`` = the VS-SEG folder name).
CASE_PATTERNS: dict[str, re.Pattern] = {"BTCV": re.compile(r"^bcv_[1-9][0-9]*$"), "VS": re.compile(r"^vs_gk_[1-9][0-9]*$")}


def _canonical(name: str) -> str:
    for key in DATASETS:
        if key.lower() == str(name).lower():
            return key
    raise ValueError(f"unknown downstream data set {name!r}; expected one of {list(DATASETS)}")


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return json.loads(_SPLITS_FILE.read_text(encoding="utf-8"))


def load_official_splits() -> dict[str, Any]:
    """The whole ``official_splits.json`` as a dict (a fresh copy)."""
    return json.loads(json.dumps(_load()))


def official_split(dataset: str) -> tuple[list[str], list[str]]:
    """``(train, val)`` case names of the official split of ``"btcv"`` or ``"vs"``."""
    entry = _load()[_canonical(dataset)]
    return list(entry["train"]), list(entry["val"])


def dataset_labels(dataset: str) -> dict[int, str]:
    """Label value → structure name (background included) of ``"btcv"`` (14 classes) or ``"vs"`` (2)."""
    return {int(k): v for k, v in _load()[_canonical(dataset)]["labels"].items()}


def validate_split(dataset: str, train: list[str], val: list[str]) -> None:
    """Check a split against the official one: counts, no overlap, no duplicates, names following the naming.

    Raises:
        ValueError: naming what differs (expected vs found).
    """
    key = _canonical(dataset)
    n_train, n_val = DATASETS[key]
    problems = []
    if (len(train), len(val)) != (n_train, n_val):
        problems.append(f"expected {n_train} train / {n_val} val cases, found {len(train)} / {len(val)}")
    for what, names in (("train", train), ("val", val)):
        if len(set(names)) != len(names):
            problems.append(f"duplicate names in {what}")
        bad = [n for n in names if not CASE_PATTERNS[key].match(n)]
        if bad:
            problems.append(f"{what} names not matching {CASE_PATTERNS[key].pattern}: {bad[:5]}")
    overlap = sorted(set(train) & set(val))
    if overlap:
        problems.append(f"cases in both train and val: {overlap[:5]}")
    ref_train, ref_val = official_split(key)
    if not problems and (set(train) != set(ref_train) or set(val) != set(ref_val)):
        problems.append(
            f"case lists differ from the official split (train: {sorted(set(train) ^ set(ref_train))[:5]}, "
            f"val: {sorted(set(val) ^ set(ref_val))[:5]})"
        )
    if problems:
        raise ValueError(f"{key} split is not the official one: " + "; ".join(problems))
