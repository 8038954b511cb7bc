"""From a data folder to planned, preprocessed cases: the downstream benchmarks (BTCV, VS) and nnU-Net raw folders.

This lives above :mod:`uniseg_hub.data` (the readers, which never import preprocessing) to keep imports one-way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import PreprocessingConfig, TaskSpec
from ..data.btcv import BTCV_MODALITIES, btcv_cases
from ..data.case import Case
from ..data.nnunet_raw import read_dataset_json
from ..data.raw import RawCase
from ..data.splits import dataset_labels, official_split
from ..data.vs import VS_MODALITIES, vs_cases
from .pipeline import load_cases
from .plan import plan_dataset

__all__ = ["BENCHMARKS", "DownstreamData", "benchmark_task", "load_downstream", "nnunet_raw_task"]

#: benchmark name → (reader, modalities, json key of its split/labels)
BENCHMARKS: dict[str, tuple[Callable[..., list[RawCase]], list[str], str]] = {
    "btcv": (btcv_cases, BTCV_MODALITIES, "BTCV"),
    "vs": (vs_cases, VS_MODALITIES, "VS"),
}


@dataclass
class DownstreamData:
    """Preprocessed cases of a benchmark split, with the plan and the task they were made with.

    Attributes:
        name: the benchmark's name (``"BTCV"``, ``"VS"``).
        train, val: the official split's cases (labels = class indices, ``-1`` outside the nonzero region).
        plan: the preprocessing contract planned on the training cases (or given).
        task: the task: name, classes, modalities, label values.
        labels: label value → structure name, background included.
    """

    name: str
    train: list[Case]
    val: list[Case]
    plan: PreprocessingConfig
    task: TaskSpec
    labels: dict[int, str]

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def in_channels(self) -> int:
        return len(self.task.modalities)

    @property
    def modalities(self) -> list[str]:
        return list(self.task.modalities)


def benchmark_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a downstream benchmark (``"btcv"`` / ``"vs"``) from its official label map."""
    key = name.lower()
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    _, modalities, json_key = BENCHMARKS[key]
    labels = dataset_labels(key)
    return TaskSpec(json_key, len(labels), list(modalities), {str(k): v for k, v in labels.items() if k != 0})


def load_downstream(
    name: str,
    root: str | Path,
    *,
    max_train: int | None = None,
    max_val: int | None = None,
    plan: PreprocessingConfig | None = None,
) -> DownstreamData:
    """Read, plan (nnU-Net v1, on the training cases) and preprocess a benchmark's official split.

    Args:
        name: ``"btcv"`` or ``"vs"``.
        root: the data folder, in the public layout or the nnU-Net raw layout (see :mod:`uniseg_hub.data.btcv`,
            :mod:`uniseg_hub.data.vs`).
        max_train, max_val: use only the first cases of each official list (quick runs, tests).
        plan: reuse a plan instead of planning from the training cases.

    Raises:
        FileNotFoundError: listing which files were expected where.
    """
    task = benchmark_task(name)
    key = name.lower()
    reader, modalities, json_key = BENCHMARKS[key]
    train_names, val_names = official_split(key)
    raw_train = reader(root, train_names[:max_train])
    raw_val = reader(root, val_names[:max_val])
    plan = plan or plan_dataset(raw_train, modalities, source=f"nnU-Net v1 plan of {len(raw_train)} {json_key} training cases")
    return DownstreamData(
        name=json_key,
        train=load_cases(raw_train, plan, task),
        val=load_cases(raw_val, plan, task),
        plan=plan,
        task=task,
        labels=dataset_labels(key),
    )


def _channel_names(meta: dict, where: str) -> list[str]:
    chans = meta.get("modality", meta.get("channel_names"))  # nnU-Net v1 / v2 spelling
    if not isinstance(chans, dict) or not chans:
        raise ValueError(f"{where}: no 'modality' entry naming the input channels, e.g. \"modality\": {{\"0\": \"CT\"}}")
    keys = sorted(chans, key=lambda k: int(k) if str(k).isdigit() else -1)
    if [str(k) for k in keys] != [str(i) for i in range(len(keys))]:
        raise ValueError(f"{where}: 'modality' keys must be the channel numbers 0..{len(keys) - 1}, found {sorted(map(str, chans))}")
    return [str(chans[k]) for k in keys]


def _label_names(meta: dict, where: str) -> dict[str, str]:
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{where}: no 'labels' entry, e.g. \"labels\": {{\"0\": \"background\", \"1\": \"liver\"}}")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):  # v2: name → value
        labels = {str(v): str(k) for k, v in labels.items()}
    bad = [k for k in labels if not str(k).isdigit()]
    if bad:
        raise ValueError(f"{where}: 'labels' keys must be label values (0, 1, ...), found {bad} (region-based labels are not supported)")
    fg = {str(int(k)): str(v) for k, v in labels.items() if int(k) != 0}
    if not fg:
        raise ValueError(f"{where}: 'labels' names no foreground label besides background 0: {labels}")
    return fg


def nnunet_raw_task(root: str | Path) -> TaskSpec:
    """The :class:`TaskSpec` of an nnU-Net raw data set folder, from its ``dataset.json``.

    ``name`` (else the folder name), ``labels`` (value → name, background 0 dropped; v2's name → value is read
    too) and ``modality`` (or v2's ``channel_names``) in channel order.

    Raises:
        FileNotFoundError: no ``dataset.json`` in ``root``.
        ValueError: a ``dataset.json`` without labels or modalities (saying what an entry looks like).
    """
    root = Path(root)
    meta = read_dataset_json(root)
    where = str(root / "dataset.json")
    if meta is None:
        raise FileNotFoundError(f"no dataset.json in {root}: expected an nnU-Net raw folder (imagesTr/, labelsTr/, dataset.json)")
    labels = _label_names(meta, where)
    name = str(meta.get("name") or root.name)
    return TaskSpec(name, len(labels) + 1, _channel_names(meta, where), labels)
