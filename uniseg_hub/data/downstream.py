"""One call from a data folder to planned, preprocessed train/val cases of a downstream benchmark (BTCV, VS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .btcv import BTCV_MODALITIES, btcv_cases
from .case import Case
from .planning import DatasetPlan
from .preprocess import load_cases, plan_dataset
from .raw import RawCase
from .splits import dataset_labels, official_split
from .vs import VS_MODALITIES, vs_cases

__all__ = ["DownstreamData", "BENCHMARKS", "load_downstream"]

#: benchmark name → (reader, modalities, json key of its split/labels)
BENCHMARKS: dict[str, tuple[Callable[..., list[RawCase]], list[str], str]] = {
    "btcv": (btcv_cases, BTCV_MODALITIES, "BTCV"),
    "vs": (vs_cases, VS_MODALITIES, "VS"),
}


@dataclass
class DownstreamData:
    """Preprocessed cases of a benchmark split, with the plan and label names used."""

    name: str
    train: list[Case]
    val: list[Case]
    plan: DatasetPlan
    labels: dict[int, str]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        return len(self.plan.modalities)


def load_downstream(
    name: str,
    root: str | Path,
    *,
    max_train: int | None = None,
    max_val: int | None = None,
    plan: DatasetPlan | None = None,
) -> DownstreamData:
    """Read, plan (nnU-Net v1 style, on the training cases) and preprocess a benchmark's official split.

    Args:
        name: ``"btcv"`` or ``"vs"``.
        root: the data folder, in the public layout or the nnU-Net raw layout (see :mod:`.btcv`, :mod:`.vs`).
        max_train, max_val: use only the first cases of each official list (quick runs, tests).
        plan: reuse a plan instead of planning from the training cases.

    Raises:
        FileNotFoundError: listing which files were expected where.
    """
    key = name.lower()
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    reader, modalities, json_key = BENCHMARKS[key]
    train_names, val_names = official_split(key)
    train_names, val_names = train_names[:max_train], val_names[:max_val]
    raw_train = reader(root, train_names)
    raw_val = reader(root, val_names)
    plan = plan or plan_dataset(raw_train, modalities, source=f"nnU-Net v1 planning of {len(raw_train)} {json_key} training cases")
    return DownstreamData(
        name=json_key,
        train=load_cases(raw_train, plan),
        val=load_cases(raw_val, plan),
        plan=plan,
        labels=dataset_labels(key),
    )
