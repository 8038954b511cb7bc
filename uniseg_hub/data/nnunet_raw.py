"""Reader of the nnU-Net raw layout: ``imagesTr/CASE_XXXX.nii.gz``, ``labelsTr/CASE.nii.gz`` and ``dataset.json``.

This is the layout the official UniSeg downstream converts BTCV (``Task060_BTCV``) and VS (``Task061_VSseg``) into
(``Downstream/Convert_*_to_nnUNet_dataset.py``) before running nnU-Net v1's ``plan_and_preprocess``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from .raw import RawCase, check_files

__all__ = ["read_dataset_json", "nnunet_raw_cases"]

_LAYOUT = "nnU-Net raw: imagesTr/CASE_0000.nii.gz (one file per channel), labelsTr/CASE.nii.gz, dataset.json"


def read_dataset_json(root: str | Path) -> dict[str, Any] | None:
    """The parsed ``dataset.json`` of an nnU-Net raw folder, or ``None`` when there is none."""
    path = Path(root) / "dataset.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def nnunet_raw_cases(root: str | Path, names: Sequence[str] | None = None, num_channels: int | None = None) -> list[RawCase]:
    """List (and check) the cases of an nnU-Net raw data set folder.

    Args:
        root: the folder holding ``imagesTr/`` and ``labelsTr/`` (and usually ``dataset.json``).
        names: cases to return, in this order; default: every case in ``imagesTr``.
        num_channels: input channels per case; default: ``len(dataset.json["modality"])`` (v2:
            ``channel_names``), else 1.

    Returns:
        One :class:`RawCase` per case with ``images = imagesTr/NAME_0000.nii.gz, ...`` and
        ``label = labelsTr/NAME.nii.gz``.

    Raises:
        FileNotFoundError: listing every expected file that is missing.
    """
    root = Path(root)
    meta = read_dataset_json(root) or {}
    if num_channels is None:
        num_channels = len(meta.get("modality", meta.get("channel_names", {}))) or 1
    if names is None:
        if not (root / "imagesTr").is_dir():
            raise FileNotFoundError(f"no imagesTr/ folder under {root} (layout: {_LAYOUT})")
        found = {m.group(1) for p in (root / "imagesTr").iterdir() if (m := re.match(r"^(.+)_\d{4}\.nii(\.gz)?$", p.name))}
        if not found:
            raise FileNotFoundError(f"{root / 'imagesTr'} holds no CASE_0000.nii.gz files (layout: {_LAYOUT})")
        names = sorted(found, key=_natural_key)
    cases = [
        RawCase(
            name=n,
            images=tuple(root / "imagesTr" / f"{n}_{c:04d}.nii.gz" for c in range(num_channels)),
            label=root / "labelsTr" / f"{n}.nii.gz",
        )
        for n in names
    ]
    check_files(cases, _LAYOUT, root)
    return cases


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
