"""Configuration of a UniSeg network: one JSON-serialisable dataclass that flows checkpoint/plans → builder → modules.

:class:`UniSegConfig` fully describes a network (and, through :class:`PreprocessingConfig` and
:class:`TaskSpec`, the contract its inputs must meet). Everything the modules need that can be derived from it
(stage widths, strides, the prompt's spatial size) is derived here, once, as read-only properties.

Axis order everywhere is nnU-Net's ``(D, H, W)`` = ``(z, y, x)`` of the image array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .jsonconfig import ConfigError, JsonConfig

__all__ = ["TaskSpec", "PreprocessingConfig", "UniSegConfig", "UPSTREAM_TASKS", "NORMALIZATION_SCHEMES", "Preset", "PRESETS"]

_NORM_NAMES = ("instance", "batch", "group", "layer")
_ACT_NAMES = ("leakyrelu", "relu", "prelu", "gelu", "elu")


@dataclass
class TaskSpec(JsonConfig):
    """One segmentation task: what a model's output channels mean and what its input channels are.

    Args:
        name: short name, e.g. ``"liver"`` or a data set's name.
        num_classes: number of output classes of the task **including background**.
        modalities: one modality name per input channel, e.g. ``["CT"]`` or ``["CT", "PET"]``.
        labels: foreground label value → structure name, e.g. ``{"1": "liver", "2": "liver tumor"}``. Class ``c``
            (output channel ``c``, ``c >= 1``) is the ``c``-th smallest label value, so a data set whose label
            values are not ``1..K-1`` (``{"1": ..., "6": ...}``) keeps its own values in written label maps.
    """

    name: str
    num_classes: int
    modalities: list[str]
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.labels, dict):
            self.labels = {str(k): v for k, v in self.labels.items()}
        self.check_types()
        if self.num_classes < 2:
            raise ConfigError(f"task {self.name!r}: TaskSpec.num_classes must count background too (>= 2), got {self.num_classes}")
        if not self.modalities:
            raise ConfigError(f"task {self.name!r}: TaskSpec.modalities must name at least one input channel")
        bad = [k for k in self.labels if not (k.isdigit() and int(k) > 0)]
        if bad:
            raise ConfigError(f"task {self.name!r}: TaskSpec.labels keys (label values) must be positive integers (background 0 is implicit), got {bad}")
        if self.labels and len(self.labels) != self.num_classes - 1:
            raise ConfigError(
                f"task {self.name!r}: TaskSpec.labels has {len(self.labels)} labels for {self.num_classes} classes "
                f"(expected num_classes - 1 = {self.num_classes - 1} foreground labels)"
            )
        self.labels = dict(sorted(self.labels.items(), key=lambda kv: int(kv[0])))

    @property
    def label_values(self) -> list[int]:
        """Label value of every class, background first: ``[0, *sorted label values]`` (``0..K-1`` without labels)."""
        if not self.labels:
            return list(range(self.num_classes))
        return [0] + [int(k) for k in self.labels]

    @property
    def class_names(self) -> list[str]:
        """Name of every foreground class (its label value when no names are recorded)."""
        if not self.labels:
            return [str(c) for c in range(1, self.num_classes)]
        return list(self.labels.values())


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

#: Intensity schemes of :class:`PreprocessingConfig` and their required parameters.
NORMALIZATION_SCHEMES: dict[str, tuple[str, ...]] = {
    "clip_rescale": ("low", "high"),
    "zscore": (),
    "ct": ("mean", "sd", "low", "high"),
}


def _check_scheme(name: str, spec: Any) -> dict[str, Any]:
    where = f"PreprocessingConfig.normalization[{name!r}]"
    if not isinstance(spec, dict) or spec.get("scheme") not in NORMALIZATION_SCHEMES:
        got = spec.get("scheme") if isinstance(spec, dict) else spec
        raise ConfigError(f"{where}: unknown scheme {got!r}; expected one of {list(NORMALIZATION_SCHEMES)}")
    scheme = spec["scheme"]
    allowed = {"scheme", *NORMALIZATION_SCHEMES[scheme], *(("use_nonzero_mask",) if scheme in ("zscore", "ct") else ())}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for scheme {scheme!r}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {"scheme": scheme}
    for key in NORMALIZATION_SCHEMES[scheme]:
        v = spec.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}: {key!r} must be a finite number for scheme {scheme!r}, got {v!r}")
        out[key] = float(v)
    if "use_nonzero_mask" in spec:
        if not isinstance(spec["use_nonzero_mask"], bool):
            raise ConfigError(f"{where}: 'use_nonzero_mask' must be true or false, got {spec['use_nonzero_mask']!r}")
        out["use_nonzero_mask"] = spec["use_nonzero_mask"]
    if "low" in out and not out["low"] < out["high"]:
        raise ConfigError(f"{where}: needs low < high, got low={out['low']}, high={out['high']}")
    if scheme == "ct" and not out["sd"] > 0:
        raise ConfigError(f"{where}: 'sd' must be > 0, got {out['sd']}")
    return out


@dataclass
class PreprocessingConfig(JsonConfig):
    """The preprocessing contract (the *plan*): what a network expects of its input arrays.

    Training and prediction apply it through one code path (:func:`uniseg_hub.preprocessing.preprocess`):
    crop to the nonzero box → resample to ``spacing`` (images: cubic B-spline; label maps: linear on one-hot
    maps; the low-resolution axis of anisotropic data with nearest neighbour) → normalise each channel by its
    modality.

    Args:
        spacing: target voxel spacing in mm, ``(z, y, x)``.
        orientation: axis-code to reorient to before resampling, or ``None`` to keep the file's voxel order
            (what the official nnU-Net v1 pipeline does; the only supported value).
        normalization: modality name → intensity scheme:

            * ``{"scheme": "clip_rescale", "low": a, "high": b}``: clip to ``[a, b]``, map linearly to ``[0, 1]``
              (the UniSeg upstream CT contract, ``[-325, 325]``);
            * ``{"scheme": "zscore", "use_nonzero_mask": m}``: ``(x - mean) / (sd + 1e-8)`` per image, over the
              whole cropped volume, or with ``m`` only inside the nonzero mask (zero outside) — nnU-Net v1's
              ``nonCT`` scheme;
            * ``{"scheme": "ct", "mean", "sd", "low", "high"}``: clip to ``[low, high]`` (the data set's
              foreground 0.5/99.5 percentiles), then ``(x - mean) / sd`` with the data set's foreground mean and
              sd — nnU-Net v1's ``CT`` scheme.

            MR sequences without an entry of their own (``T1``, ``FLAIR`` ...) use ``"MR"``'s.
        source: how the contract was made (``"UniSeg upstream contract"``, ``"nnU-Net v1 plan of 21 training
            cases of ..."``), for model cards and logs.
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
    source: str = ""

    def __post_init__(self) -> None:
        self.check_types()
        if len(self.spacing) != 3 or any(not (math.isfinite(s) and s > 0) for s in self.spacing):
            raise ConfigError(f"PreprocessingConfig.spacing must be three positive numbers (z, y, x) in mm, got {self.spacing}")
        if not self.normalization:
            raise ConfigError("PreprocessingConfig.normalization must name at least one modality")
        self.normalization = {name: _check_scheme(name, spec) for name, spec in self.normalization.items()}

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
class UniSegConfig(JsonConfig):
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
        tasks: optional description of each prompt task (``len == num_tasks`` when given); a prompt-free backbone
            may hold one entry describing its only task (data set name, classes, modalities, label values).
        default_task: the task used when none is named (e.g. the new task of a ``keep-prompt`` transfer);
            ``None``: a prompt model must be told its task, a backbone has only one.
        norm: MONAI-style norm spec, e.g. ``("instance", {"affine": True, "eps": 1e-5})``.
        act: MONAI-style activation spec, e.g. ``("leakyrelu", {"negative_slope": 0.01})``.
        deep_supervision: return logits of every decoder scale (finest first) instead of the finest only.
        mirror_axes: the spatial axes (0 = D, 1 = H, 2 = W) test-time mirroring may flip: those the weights were
            trained mirrored along (nnU-Net's ``inference_allowed_mirroring_axes``; the upstream weights: all three;
            a fine-tune records its augmentation's). The predictor's default.
        fusion_blocks: conv-norm-act blocks of the prompt fusion layer (official: 3).
        preprocessing: the preprocessing contract of the weights (for a fine-tuned model: its data set's plan).
        name: a label for the model card and logs.
        provenance: where the weights come from, JSON data for the model card (``upstream``, ``strategy``,
            ``dataset``, ``recipe``, ``validation`` ... for a fine-tuned model; ``converted_from`` ... for a
            converted one).

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
    norm: Any = field(default_factory=lambda: ["instance", {"affine": True, "eps": 1e-5}])
    act: Any = field(default_factory=lambda: ["leakyrelu", {"negative_slope": 0.01, "inplace": True}])
    deep_supervision: bool = False
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    fusion_blocks: int = 3
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    name: str = "uniseg"
    default_task: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("patch_size", "input_channels", "pool_op_kernel_sizes", "conv_kernel_sizes"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                setattr(self, name, [list(v) if isinstance(v, tuple) else v for v in value])
        self.check_types()
        self.input_channels = sorted(set(self.input_channels))
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
        if self.num_tasks > 0 and self.tasks and len(self.tasks) != self.num_tasks:
            raise ValueError(f"{len(self.tasks)} task descriptions given for num_tasks={self.num_tasks}")
        if self.num_tasks == 0 and len(self.tasks) > 1:
            raise ValueError(f"a prompt-free backbone (num_tasks=0) has one task; {len(self.tasks)} task descriptions given")
        for t in self.tasks:
            if t.num_classes > self.num_classes:
                raise ValueError(f"task {t.name!r} has {t.num_classes} classes but the network only {self.num_classes} outputs")
        if self.default_task is not None and not 0 <= self.default_task < max(self.num_tasks, 1):
            raise ValueError(f"default_task {self.default_task} is not a task of this model (tasks 0..{max(self.num_tasks, 1) - 1})")
        if any(a not in (0, 1, 2) for a in self.mirror_axes) or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"mirror_axes must be distinct spatial axes among 0, 1, 2, got {self.mirror_axes}")
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

    @property
    def is_backbone(self) -> bool:
        """A prompt-free network (``num_tasks == 0``): one task, no task id."""
        return self.num_tasks == 0

    def task_index(self, task: int | str) -> int:
        """Resolve a task id or name of a prompt model to its id, with a clear error for unknown ones."""
        if self.is_backbone:
            raise ValueError(
                f"this prompt-free backbone ({self.name}) has one task"
                + (f" ({self.tasks[0].name!r})" if self.tasks else "")
                + " and takes no task id; call it without one (omit --task)"
            )
        if isinstance(task, str) and not task.strip().lstrip("-").isdigit():
            names = [t.name for t in self.tasks]
            if task not in names:
                raise ValueError(f"unknown task {task!r}; known tasks: {names or 'none (the config lists no task names)'}")
            return names.index(task)
        if isinstance(task, bool) or not isinstance(task, (int, str)) and not hasattr(task, "__index__"):
            raise ValueError(f"a task is an id (int) or a name (str), got {task!r} ({type(task).__name__})")
        idx = int(task)
        if not 0 <= idx < self.num_tasks:
            raise ValueError(f"task id {idx} is out of range: this model has {self.num_tasks} tasks (0..{self.num_tasks - 1})")
        return idx

    def resolve_task(self, task: int | str | None = None) -> int | None:
        """The task to run: ``None`` for a backbone (which must not be given one), else an id.

        ``task=None`` selects :attr:`default_task`; a prompt model without one needs a task.
        """
        if self.is_backbone:
            if task is not None:
                self.task_index(task)  # raises the explanation
            return None
        if task is None:
            if self.default_task is None:
                names = [t.name for t in self.tasks] or list(range(self.num_tasks))
                raise ValueError(f"this model has {self.num_tasks} tasks and no default task: name one of {names}")
            return self.default_task
        return self.task_index(task)

    def task_spec(self, task: int | None = None) -> TaskSpec | None:
        """The :class:`TaskSpec` of a task id (``None``: a backbone's only task), when the config records it."""
        if self.is_backbone:
            return self.tasks[0] if self.tasks else None
        if task is None or task >= len(self.tasks):
            return None
        return self.tasks[task]

    def task_num_classes(self, task: int | None = None) -> int:
        """Output channels that belong to ``task`` (a task may use fewer than the heads provide)."""
        spec = self.task_spec(task)
        return min(spec.num_classes, self.num_classes) if spec is not None else self.num_classes

    # ---- serialisation: to_dict / from_dict / to_json / from_json / replace come from JsonConfig -----------

    # ---- presets (declared once, in PRESETS below) ----------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "UniSegConfig":
        """The config of a registered preset (:data:`PRESETS`), with ``overrides`` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
        kw: dict[str, Any] = dict(name=name, **PRESETS[name].fields)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def uniseg_11task(cls, **overrides: Any) -> "UniSegConfig":
        """The published upstream network (preset ``uniseg_11task``)."""
        return cls.preset("uniseg_11task", **overrides)

    @classmethod
    def btcv(cls, **overrides: Any) -> "UniSegConfig":
        """The official downstream backbone for BTCV (preset ``uniseg_btcv``)."""
        return cls.preset("uniseg_btcv", **overrides)

    @classmethod
    def vs(cls, **overrides: Any) -> "UniSegConfig":
        """The official downstream backbone for VS (preset ``uniseg_vs``)."""
        return cls.preset("uniseg_vs", **overrides)


@dataclass(frozen=True)
class Preset:
    """A named network: what it is (one line) and the :class:`UniSegConfig` fields that differ from the defaults."""

    description: str
    fields: dict[str, Any]


#: The one declaration of the presets, read by :meth:`UniSegConfig.preset` (and its three shortcuts),
#: :func:`uniseg_hub.create_model` / :func:`uniseg_hub.list_models` and the timm registration
#: (:mod:`uniseg_hub.timm_models`). A preset with ``num_tasks > 0`` builds a :class:`~uniseg_hub.UniSeg`, else a
#: :class:`~uniseg_hub.UniSegBackbone`.
PRESETS: dict[str, Preset] = {
    "uniseg_11task": Preset(
        "Upstream UniSeg: 11 prompt tasks, patch 64x192x192 at 3x1.5x1.5 mm, 4 output classes (32.1M parameters)",
        dict(num_tasks=11, num_classes=4, tasks=UPSTREAM_TASKS),
    ),
    "uniseg_btcv": Preset(
        "Official downstream backbone for BTCV: 13 abdominal organs + background, CT (no prompt)",
        dict(num_tasks=0, num_classes=14),
    ),
    "uniseg_vs": Preset(
        "Official downstream backbone for VS: vestibular schwannoma + background, contrast T1 MR (no prompt)",
        dict(num_tasks=0, num_classes=2),
    ),
}
