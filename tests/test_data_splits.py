"""The official downstream splits shipped as package data, checked against the reference fixture and the naming."""

from __future__ import annotations

import json
import re

import pytest

from uniseg_hub.data import dataset_labels, load_official_splits, official_split, validate_split
from uniseg_hub.data.splits import _SPLITS_FILE

from .conftest import FIXTURES


def test_package_copy_is_the_reference_fixture():
    assert json.loads(_SPLITS_FILE.read_text()) == json.loads((FIXTURES / "downstream_splits" / "official_splits.json").read_text())


@pytest.mark.parametrize("name, n_train, n_val, pattern", [("btcv", 21, 9, r"^bcv_\d+$"), ("vs", 193, 49, r"^vs_gk_\d+$")])
def test_official_split_counts_overlap_naming(name, n_train, n_val, pattern):
    train, val = official_split(name)
    assert (len(train), len(val)) == (n_train, n_val)
    assert len(set(train)) == n_train and len(set(val)) == n_val
    assert not set(train) & set(val)
    assert all(re.match(pattern, n) for n in train + val)
    validate_split(name, train, val)  # does not raise


def test_btcv_split_is_the_official_list():
    # Downstream/Convert_BTCV_to_nnUNet_dataset.py: imgs 1-10 and 21-31 train, 32-40 val (public training set)
    train, val = official_split("BTCV")
    assert train == [f"bcv_{i}" for i in [*range(1, 11), *range(21, 32)]]
    assert val == [f"bcv_{i}" for i in range(32, 41)]


def test_vs_split_is_a_seeded_shuffle_of_the_folders():
    # the split is an 80/20 cut of 242 shuffled folder names: together they are 242 distinct vs_gk_N folders
    train, val = official_split("vs")
    assert len(set(train) | set(val)) == 242 and 193 == int(0.8 * 242)


def test_label_maps():
    btcv = dataset_labels("btcv")
    assert len(btcv) == 14 and btcv[0] == "background" and btcv[1] == "spleen" and btcv[13] == "left adrenal gland"
    assert dataset_labels("vs") == {0: "background", 1: "vestibular schwannoma"}
    assert load_official_splits()["VS"]["modality"].startswith("MR")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t, v: (t[:-1], v), "expected 21 train / 9 val"),
        (lambda t, v: (t[:-1] + [v[0]], v), "both train and val"),
        (lambda t, v: (t[:-1] + ["img0031"], v), "not matching"),
        (lambda t, v: (t[:-1] + ["bcv_11"], v), "differ from the official split"),
    ],
)
def test_validate_split_names_the_problem(mutate, message):
    train, val = official_split("btcv")
    with pytest.raises(ValueError, match=message):
        validate_split("btcv", *mutate(train, val))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="expected one of"):
        official_split("kits")
