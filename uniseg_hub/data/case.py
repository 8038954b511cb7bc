"""The unit of data every reader yields and the training engine consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case"]


@dataclass
class Case:
    """One preprocessed training/validation case.

    Attributes:
        name: case identifier (e.g. ``"img0001"``).
        image: ``(C, D, H, W)`` float32, already resampled to the target spacing and intensity-normalised.
        label: ``(D, H, W)`` integer array of class indices ``0..K-1`` on the same grid (class ``c`` = the ``c``-th
            entry of the task's ``label_values``), ``-1`` = background outside the nonzero region (nnU-Net's
            convention; training treats it as background), or ``None`` for unlabelled cases.
        spacing: voxel spacing of ``image`` in mm, ``(z, y, x)``.
        task_id: prompt task of the case for multi-task (prompt-driven) training; ``None`` for single-task.
        meta: anything else (source paths, original geometry, ...).
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    task_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 4:
            raise ValueError(f"case {self.name!r}: image must be (C, D, H, W), got shape {self.image.shape}")
        if self.label is not None and not np.issubdtype(np.asarray(self.label).dtype, np.integer):
            raise ValueError(
                f"case {self.name!r}: label must be an integer array of class indices (-1 = outside the nonzero "
                f"region), got dtype {np.asarray(self.label).dtype}"
            )
        if self.label is not None and tuple(self.label.shape) != tuple(self.image.shape[1:]):
            raise ValueError(
                f"case {self.name!r}: label shape {tuple(self.label.shape)} does not match image grid "
                f"{tuple(self.image.shape[1:])}"
            )
