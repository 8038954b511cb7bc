"""Where a case's files are: the :class:`RawCase` record every layout reader returns, and the missing-file check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["RawCase", "check_files", "nnunet_raw_dir"]


@dataclass(frozen=True)
class RawCase:
    """One case on disk, before any preprocessing.

    Attributes:
        name: case identifier in the official naming (``bcv_1``, ``vs_gk_5``, or the nnU-Net raw case name).
        images: one NIfTI file per input channel, in channel order.
        label: the label map NIfTI, or ``None`` for unlabelled cases.
    """

    name: str
    images: tuple[Path, ...]
    label: Path | None


def check_files(cases: Iterable[RawCase], layout: str, root: str | Path) -> None:
    """Raise one :class:`FileNotFoundError` listing every expected file that is missing.

    Args:
        cases: cases whose ``images`` and ``label`` must exist.
        layout: a description of the layout the reader assumed (printed in the message).
        root: the folder the user gave (printed in the message).
    """
    cases = list(cases)
    missing = [p for c in cases for p in (*c.images, *([c.label] if c.label is not None else [])) if not Path(p).is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:12])
        more = f"\n  ... and {len(missing) - 12} more" if len(missing) > 12 else ""
        raise FileNotFoundError(
            f"{len(missing)} of the files expected for {len(cases)} cases are missing under {root} "
            f"(layout: {layout}). Expected but not found:\n  {shown}{more}"
        )


def nnunet_raw_dir(root: str | Path) -> Path | None:
    """``root`` itself when it is an nnU-Net raw data set folder (has ``imagesTr/``), else ``None``."""
    root = Path(root)
    return root if (root / "imagesTr").is_dir() else None
