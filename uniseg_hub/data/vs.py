"""Vestibular-Schwannoma-SEG (TCIA, contrast-enhanced T1 MR, 1 tumour class) in its public or nnU-Net raw layout.

Public layout: ``VS-SEG/vs_gk_N/vs_gk_t1_refT1.nii.gz`` (image) and ``vs_gk_seg_refT1.nii.gz`` (label); the case
name is the folder name (``Downstream/Convert_VSseg_to_nnUNet_dataset.py``). The nnU-Net raw layout of that
script (``imagesTr/vs_gk_N_0000.nii.gz``, ``labelsTr/vs_gk_N.nii.gz``) is read as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .nnunet_raw import nnunet_raw_cases
from .raw import RawCase, check_files, nnunet_raw_dir
from .splits import dataset_labels, official_split

__all__ = ["VS_LABELS", "VS_MODALITIES", "vs_cases", "vs_seg_dir"]

#: Label value → structure (background included), as in ``official_splits.json``.
VS_LABELS: dict[int, str] = dataset_labels("vs")
VS_MODALITIES: list[str] = ["MR"]

_LAYOUT = "VS public: VS-SEG/vs_gk_N/vs_gk_t1_refT1.nii.gz + VS-SEG/vs_gk_N/vs_gk_seg_refT1.nii.gz (case vs_gk_N)"


def vs_seg_dir(root: str | Path) -> Path:
    """The folder holding the ``vs_gk_N`` case folders: ``root`` itself or ``root/VS-SEG``."""
    root = Path(root)
    if (root / "VS-SEG").is_dir():
        return root / "VS-SEG"
    return root


def vs_cases(root: str | Path, names: Sequence[str] | None = None) -> list[RawCase]:
    """List (and check) VS cases under ``root``.

    Args:
        root: the folder holding ``VS-SEG/`` (or ``VS-SEG`` itself), or an nnU-Net raw folder.
        names: ``vs_gk_N`` names; default: the 242 cases of the official split (193 train + 49 val).

    Raises:
        FileNotFoundError: naming every expected file that is missing and the layout assumed.
    """
    if names is None:
        train, val = official_split("vs")
        names = train + val
    if (raw := nnunet_raw_dir(root)) is not None:
        return nnunet_raw_cases(raw, names, num_channels=1)
    base = vs_seg_dir(root)
    cases = [RawCase(n, (base / n / "vs_gk_t1_refT1.nii.gz",), base / n / "vs_gk_seg_refT1.nii.gz") for n in names]
    check_files(cases, _LAYOUT, root)
    return cases
