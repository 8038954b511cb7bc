"""BTCV (Beyond the Cranial Vault, 13 abdominal organs, CT) in its public layout or the nnU-Net raw layout.

Public layout (Synapse ``RawData.zip``): ``RawData/Training/img/imgNNNN.nii.gz`` and
``RawData/Training/label/labelNNNN.nii.gz``; the official UniSeg downstream names the case ``bcv_N`` with
``N = int(NNNN)`` (``Downstream/Convert_BTCV_to_nnUNet_dataset.py``). The nnU-Net raw layout of that script
(``imagesTr/bcv_N_0000.nii.gz``, ``labelsTr/bcv_N.nii.gz``) is read as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .nnunet_raw import nnunet_raw_cases
from .raw import RawCase, check_files, nnunet_raw_dir
from .splits import dataset_labels, official_split

__all__ = ["BTCV_LABELS", "BTCV_MODALITIES", "btcv_cases", "btcv_training_dir"]

#: Label value → organ (background included), as in the official ``dataset.json``.
BTCV_LABELS: dict[int, str] = dataset_labels("btcv")
BTCV_MODALITIES: list[str] = ["CT"]

_LAYOUT = "BTCV public: RawData/Training/img/imgNNNN.nii.gz + RawData/Training/label/labelNNNN.nii.gz (case bcv_N)"


def btcv_training_dir(root: str | Path) -> Path:
    """The folder holding ``img/`` and ``label/``: ``root`` itself, ``root/Training`` or ``root/RawData/Training``."""
    root = Path(root)
    for cand in (root, root / "Training", root / "RawData" / "Training"):
        if (cand / "img").is_dir():
            return cand
    return root / "RawData" / "Training"


def btcv_cases(root: str | Path, names: Sequence[str] | None = None) -> list[RawCase]:
    """List (and check) BTCV cases under ``root``.

    Args:
        root: the BTCV folder (holding ``RawData/``, or ``RawData/Training`` itself, or its parent with ``img/``),
            or an nnU-Net raw folder (``imagesTr/``, ``labelsTr/``).
        names: ``bcv_N`` names to return; default: the 30 cases of the official split (21 train + 9 val).

    Raises:
        FileNotFoundError: naming every expected file that is missing and the layout assumed.
        ValueError: for a name not of the form ``bcv_N``.
    """
    if names is None:
        train, val = official_split("btcv")
        names = train + val
    if (raw := nnunet_raw_dir(root)) is not None:
        return nnunet_raw_cases(raw, names, num_channels=1)
    base = btcv_training_dir(root)
    cases = []
    for n in names:
        if not n.startswith("bcv_") or not n[4:].isdigit():
            raise ValueError(f"BTCV case names are bcv_N (N = int of imgNNNN), got {n!r}")
        k = int(n[4:])
        cases.append(RawCase(n, (base / "img" / f"img{k:04d}.nii.gz",), base / "label" / f"label{k:04d}.nii.gz"))
    check_files(cases, _LAYOUT, root)
    return cases
