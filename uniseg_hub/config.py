"""Configuration of a UniSeg network: one JSON-serialisable dataclass that flows checkpoint/plans → builder → modules.

:class:`UniSegConfig` fully describes a network (and, through :class:`PreprocessingConfig` and
:class:`TaskSpec`, the contract its inputs must meet). Everything the modules need that can be derived from it
(stage widths, strides, the prompt's spatial size) is derived here, once, as read-only properties.

Axis order everywhere is nnU-Net's ``(D, H, W)`` = ``(z, y, x)`` of the image array.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TaskSpec", "PreprocessingConfig", "UniSegConfig", "UPSTREAM_TASKS"]

_NORM_NAMES = ("instance", "batch", "group", "layer")
_ACT_NAMES = ("leakyrelu", "relu", "prelu", "gelu", "elu")


@dataclass
class TaskSpec:
    """One segmentation task the universal prompt knows.

    Args:
        name: short name, e.g. ``"liver"``.
        num_classes: number of output classes of the task **including background**.
        modalities: one modality name per input channel, e.g. ``["CT"]`` or ``["CT", "PET"]``.
        labels: foreground label value → structure name, e.g. ``{"1": "liver", "2": "liver tumor"}``.
    """

    name: str
    num_classes: int
    modalities: list[str]
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modalities = list(self.modalities)
        self.labels = {str(k): str(v) for k, v in self.labels.items()}
        if self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: num_classes must count background too (>= 2), got {self.num_classes}")
        if self.labels and len(self.labels) != self.num_classes - 1:
            raise ValueError(
                f"task {self.name!r}: {len(self.labels)} labels given for {self.num_classes} classes "
                f"(expected num_classes - 1 = {self.num_classes - 1} foreground labels)"
            )


#: The 11 upstream tasks of the published UniSeg model, in task-id order (official ``task_name_prefix`` order).
UPSTREAM_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("liver", 3, ["CT"], {"1": "liver", "2": "liver tumor"}),
    TaskSpec("kidney", 3, ["CT"], {"1": "kidney", "2": "kidney tumor"}),
    TaskSpec("hepatic_vessel", 3, ["CT"], {"1": "hepatic vessel", "2": "hepatic tumor"}),
    TaskSpec("pancreas", 3, ["CT"], {"1": "pancreas", "2": "pancreas tumor"}),
    TaskSpec("colon", 2, ["CT"], {"1": "colon tumor"}),
    TaskSpec("lung", 2, ["CT"], {"1": "lung tumor"}),
    TaskSpec("spleen", 2, ["CT"], {"1": "spleen"}),
    TaskSpec("vertebrae", 2, ["CT"], {"1": "vertebrae"}),
    TaskSpec("prostate", 2, ["MR"], {"1": "prostate"}),
    TaskSpec("brain_tumor", 4, ["T1", "T1ce", "T2", "FLAIR"], {"1": "edema", "2": "non-enhancing", "3": "enhancing"}),
    TaskSpec("whole_body_tumor", 2, ["CT", "PET"], {"1": "tumor"}),
)


@dataclass
class PreprocessingConfig:
    """The preprocessing contract: what the network expects of its input arrays.

    Args:
        spacing: target voxel spacing in mm, ``(z, y, x)``.
        orientation: axis-code to reorient to before resampling, or ``None`` to keep the file's voxel order
            (what the official nnU-Net v1 pipeline does).
        normalization: modality name → intensity scheme. ``{"scheme": "clip_rescale", "low": a, "high": b}``
            clips to ``[a, b]`` and maps it linearly to ``[0, 1]``; ``{"scheme": "zscore"}`` subtracts the
            image's mean and divides by its standard deviation.
    """

    spacing: list[float] = field(default_factory=lambda: [3.0, 1.5, 1.5])
    orientation: str | None = None
    normalization: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "CT": {"scheme": "clip_rescale", "low": -325.0, "high": 325.0},
            "MR": {"scheme": "zscore"},
            "PET": {"scheme": "zscore"},
        }
    )

    def __post_init__(self) -> None:
        self.spacing = [float(s) for s in self.spacing]
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise ValueError(f"preprocessing.spacing must be three positive numbers (z, y, x), got {self.spacing}")
        for name, spec in self.normalization.items():
            if spec.get("scheme") not in ("clip_rescale", "zscore"):
                raise ValueError(
                    f"preprocessing.normalization[{name!r}]: unknown scheme {spec.get('scheme')!r}; "
                    "expected 'clip_rescale' or 'zscore'"
                )

    def scheme_for(self, modality: str) -> dict[str, Any]:
        """The intensity scheme of one modality; MR sequences (T1, T2, FLAIR, ...) fall back to ``"MR"``."""
        if modality in self.normalization:
            return self.normalization[modality]
        if modality not in ("CT", "PET") and "MR" in self.normalization:
            return self.normalization["MR"]
        raise KeyError(f"no intensity normalisation for modality {modality!r}; known: {sorted(self.normalization)}")


def _as_pair(value: Any, what: str, allowed: tuple[str, ...]) -> list:
    """Normalise a MONAI-style layer spec (``"name"`` or ``("name", {kwargs})``) to ``[name, kwargs]``."""
    if isinstance(value, str):
        name, kwargs = value, {}
    elif isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict):
        name, kwargs = value[0], dict(value[1])
    else:
        raise ValueError(f"{what} must be a name or (name, kwargs) pair like ('instance', {{'affine': True}}), got {value!r}")
    if name.lower() not in allowed:
        raise ValueError(f"{what}: unknown layer name {name!r}; expected one of {list(allowed)}")
    return [name.lower(), kwargs]


@dataclass
class UniSegConfig:
    """Everything needed to build a UniSeg network (and to feed it).

    Args:
        patch_size: training patch ``(D, H, W)``; the universal prompt is sized to it.
        pool_op_kernel_sizes: per downsampling step, the stride of the strided conv (also the transposed-conv
            kernel and stride on the way up). ``len = num_stages - 1``.
        conv_kernel_sizes: per stage (encoder stages + bottleneck), the conv kernel. ``len = num_stages``.
        base_num_features: channels of the first stage; doubled per stage up to ``max_num_features``.
        max_num_features: channel cap (nnU-Net's 320 for 3D).
        conv_per_stage: conv-norm-act blocks per encoder and decoder stage.
        input_channels: channel counts the first stage has a stem for (1: CT or MR, 2: CT+PET, 4: four MR).
        num_classes: output classes of the segmentation heads (background included).
        num_tasks: tasks of the universal prompt (0 for a prompt-free backbone).
        tasks: optional description of each task (``len == num_tasks`` when given).
        norm: MONAI-style norm spec, e.g. ``("instance", {"affine": True, "eps": 1e-5})``.
        act: MONAI-style activation spec, e.g. ``("leakyrelu", {"negative_slope": 0.01})``.
        deep_supervision: return logits of every decoder scale (finest first) instead of the finest only.
        fusion_blocks: conv-norm-act blocks of the prompt fusion layer (official: 3).
        preprocessing: the preprocessing contract of the weights.
        name: a label for the model card and logs.

    Example:
        >>> cfg = UniSegConfig.uniseg_11task()
        >>> cfg.stage_channels
        [32, 64, 128, 256, 320, 320]
        >>> cfg.prompt_size
        [4, 6, 6]
    """

    patch_size: list[int] = field(default_factory=lambda: [64, 192, 192])
    pool_op_kernel_sizes: list[list[int]] = field(default_factory=lambda: [[1, 2, 2]] + [[2, 2, 2]] * 4)
    conv_kernel_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 3]] + [[3, 3, 3]] * 5)
    base_num_features: int = 32
    max_num_features: int = 320
    conv_per_stage: int = 2
    input_channels: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_classes: int = 4
    num_tasks: int = 11
    tasks: list[TaskSpec] = field(default_factory=list)
    norm: list = field(default_factory=lambda: ["instance", {"affine": True, "eps": 1e-5}])
    act: list = field(default_factory=lambda: ["leakyrelu", {"negative_slope": 0.01, "inplace": True}])
    deep_supervision: bool = False
    fusion_blocks: int = 3
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    name: str = "uniseg"

    def __post_init__(self) -> None:
        self.patch_size = [int(p) for p in self.patch_size]
        self.pool_op_kernel_sizes = [[int(k) for k in ks] for ks in self.pool_op_kernel_sizes]
        self.conv_kernel_sizes = [[int(k) for k in ks] for ks in self.conv_kernel_sizes]
        self.input_channels = sorted({int(c) for c in self.input_channels})
        self.tasks = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in self.tasks]
        if isinstance(self.preprocessing, dict):
            self.preprocessing = PreprocessingConfig(**self.preprocessing)
        self.norm = _as_pair(self.norm, "norm", _NORM_NAMES)
        self.act = _as_pair(self.act, "act", _ACT_NAMES)
        self._validate()

    def _validate(self) -> None:
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries (D, H, W), got {self.patch_size}")
        for what, kernels in (("pool_op_kernel_sizes", self.pool_op_kernel_sizes), ("conv_kernel_sizes", self.conv_kernel_sizes)):
            if any(len(k) != 3 or min(k) < 1 for k in kernels):
                raise ValueError(f"every entry of {what} must be 3 positive ints, got {kernels}")
        if not self.pool_op_kernel_sizes:
            raise ValueError("pool_op_kernel_sizes must have at least one downsampling step")
        if len(self.conv_kernel_sizes) != len(self.pool_op_kernel_sizes) + 1:
            raise ValueError(
                f"conv_kernel_sizes needs one entry per stage = len(pool_op_kernel_sizes) + 1 = "
                f"{len(self.pool_op_kernel_sizes) + 1}, got {len(self.conv_kernel_sizes)}"
            )
        if any(k % 2 == 0 for ks in self.conv_kernel_sizes for k in ks):
            raise ValueError(f"conv kernels must be odd (same padding), got {self.conv_kernel_sizes}")
        bad = [p % d for p, d in zip(self.patch_size, self.divisor)]
        if any(bad):
            raise ValueError(f"patch_size {self.patch_size} must be divisible by the total stride {self.divisor}")
        if self.norm[0] == "instance" and math.prod(self.prompt_size) == 1:
            raise ValueError(
                f"patch_size {self.patch_size} leaves a 1-voxel bottleneck (total stride {self.divisor}); instance "
                "norm needs more than one voxel: use at least twice the total stride along one axis"
            )
        if self.conv_per_stage < 1 or self.base_num_features < 1 or self.max_num_features < self.base_num_features:
            raise ValueError("conv_per_stage and base_num_features must be >= 1 and max_num_features >= base_num_features")
        if not self.input_channels or min(self.input_channels) < 1:
            raise ValueError(f"input_channels must list positive channel counts, got {self.input_channels}")
        if self.num_classes < 1 or self.num_tasks < 0:
            raise ValueError(f"num_classes must be >= 1 and num_tasks >= 0, got {self.num_classes}, {self.num_tasks}")
        if self.tasks and len(self.tasks) != self.num_tasks:
            raise ValueError(f"{len(self.tasks)} task descriptions given for num_tasks={self.num_tasks}")
        if self.fusion_blocks < 2:
            raise ValueError(f"fusion_blocks must be >= 2, got {self.fusion_blocks}")

    # ---- derived, read-only -------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Encoder stages including the bottleneck."""
        return len(self.conv_kernel_sizes)

    @property
    def stage_channels(self) -> list[int]:
        """Output channels of every encoder stage, bottleneck last."""
        return [min(self.base_num_features * 2**i, self.max_num_features) for i in range(self.num_stages)]

    @property
    def stage_strides(self) -> list[list[int]]:
        """Stride of each stage's first conv relative to the previous stage (stage 0: 1)."""
        return [[1, 1, 1]] + self.pool_op_kernel_sizes

    @property
    def reductions(self) -> list[list[int]]:
        """Cumulative downsampling of each stage's output relative to the input, per axis."""
        out, acc = [], [1, 1, 1]
        for s in self.stage_strides:
            acc = [a * b for a, b in zip(acc, s)]
            out.append(list(acc))
        return out

    @property
    def divisor(self) -> list[int]:
        """Every spatial input size must be a multiple of this (the total stride)."""
        return [math.prod([k[i] for k in self.pool_op_kernel_sizes]) for i in range(3)]

    @property
    def prompt_size(self) -> list[int]:
        """Spatial size of the universal prompt = bottleneck size at the training patch."""
        return [p // d for p, d in zip(self.patch_size, self.divisor)]

    @property
    def fusion_channels(self) -> int:
        """Hidden width of the prompt fusion layer: ``(bottleneck + num_tasks) // 4`` as in the official code."""
        return (self.stage_channels[-1] + self.num_tasks) // 4

    def task_index(self, task: int | str) -> int:
        """Resolve a task id or name to its id, with a clear error for unknown ones."""
        if isinstance(task, str) and not task.isdigit():
            names = [t.name for t in self.tasks]
            if task not in names:
                raise ValueError(f"unknown task {task!r}; known tasks: {names or 'none (the config lists no task names)'}")
            return names.index(task)
        idx = int(task)
        if not 0 <= idx < self.num_tasks:
            raise ValueError(f"task id {idx} is out of range: this model has {self.num_tasks} tasks (0..{self.num_tasks - 1})")
        return idx

    # ---- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UniSegConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown UniSegConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "UniSegConfig":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as fh:
                text = fh.read()
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "UniSegConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---- presets ------------------------------------------------------------------------------------------
    @classmethod
    def uniseg_11task(cls, **overrides: Any) -> "UniSegConfig":
        """The published upstream network: 11 tasks, patch 64x192x192 at 3x1.5x1.5 mm, 4 output classes."""
        kw: dict[str, Any] = dict(name="uniseg_11task", num_tasks=11, num_classes=4, tasks=list(UPSTREAM_TASKS))
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def btcv(cls, **overrides: Any) -> "UniSegConfig":
        """The official downstream backbone for BTCV (13 abdominal organs + background, CT)."""
        kw: dict[str, Any] = dict(name="uniseg_btcv", num_tasks=0, num_classes=14)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def vs(cls, **overrides: Any) -> "UniSegConfig":
        """The official downstream backbone for VS (vestibular schwannoma + background, contrast T1 MR)."""
        kw: dict[str, Any] = dict(name="uniseg_vs", num_tasks=0, num_classes=2)
        kw.update(overrides)
        return cls(**kw)
