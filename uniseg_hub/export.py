"""Export UniSeg networks to portable graphs: ONNX (onnxruntime, TensorRT, ...) and TorchScript.

:class:`~uniseg_hub.model.UniSeg` validates its inputs in Python (input size, channel count, task ids read with
``int(t.min())``), which neither ``torch.export`` nor ``torch.jit.trace`` can record. The export modules here call
the same submodules — ``encoder.stages``, ``prompt.prompt`` and ``prompt.fusion``, ``decoder`` — without those
checks; :func:`build_export_module` validates once, before export, that the module reproduces the eager model.

Three graph kinds:

* :class:`TaskFixedUniSeg` — ``logits = f(x)``: one task baked in as a constant.
* :class:`TaskInputUniSeg` — ``logits = f(x, task_id)`` with ``task_id`` ``(B,)`` int64, one task per sample.
* :class:`BackboneExport` — ``logits = f(x)`` for :class:`~uniseg_hub.model.UniSegBackbone`.

Every graph takes one input channel count (the stem is chosen at export time), returns the finest logits
``(B, num_classes, D, H, W)`` (deep supervision is not exported) and has a dynamic batch axis. UniSeg graphs take
exactly ``config.patch_size`` (the prompt is sized to it; use :mod:`uniseg_hub.inference` for whole volumes); the
ONNX backbone graph also takes any multiple of ``config.divisor`` (``D = 16·d`` ...), the TorchScript one any size
the eager backbone takes. ONNX files use opset :data:`DEFAULT_OPSET` = 18, the opset torch's exporter emits natively
(onnxscript torchlib; no version conversion), run by onnxruntime ≥ 1.14 and TensorRT ≥ 8.6. In ONNX graphs instance
norms are written as nested means (:class:`StableInstanceNorm`), which keeps onnxruntime within float32 rounding of
PyTorch on zero-padded sliding windows.

The export's description (:class:`ExportInfo`: kind, task, channels, config ...) is stored inside the file (ONNX
``metadata_props["uniseg_hub"]``, TorchScript extra file ``uniseg_hub.json``); :func:`load_exported` reads it
back into an :class:`ExportedModel`, a callable ``f(x, task_id) -> logits`` that also plugs into
:func:`~uniseg_hub.inference.sliding_window_inference` and :class:`~uniseg_hub.inference.UniSegPredictor`.

Example:
    >>> export_onnx(model, "uniseg_liver.onnx", task="liver")               # doctest: +SKIP
    >>> net = load_exported("uniseg_liver.onnx")                           # doctest: +SKIP
    >>> net(torch.randn(2, 1, *model.config.patch_size)).shape             # doctest: +SKIP
    torch.Size([2, 4, 64, 192, 192])
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .config import UniSegConfig
from .encoder import check_volume
from .model import UniSeg, UniSegBackbone
from .prompt import as_task_tensor
from .interop import export_nnunetv2_pretrained, from_dynunet, to_dynunet, to_nnunetv2  # re-exports (MONAI, nnU-Net v2)

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "ExportInfo",
    "TaskFixedUniSeg",
    "TaskInputUniSeg",
    "BackboneExport",
    "StableInstanceNorm",
    "build_export_module",
    "export_onnx",
    "export_torchscript",
    "export_model",
    "ExportedModel",
    "load_exported",
    "verify_export",
    "to_dynunet",
    "from_dynunet",
    "to_nnunetv2",
    "export_nnunetv2_pretrained",
]

logger = logging.getLogger(__name__)

#: ONNX opset of exported files: torch's dynamo exporter emits opset 18 natively (torchlib).
DEFAULT_OPSET = 18
EXPORT_FORMATS = ("onnx", "torchscript")
_METADATA_KEY = "uniseg_hub"
_TS_EXTRA_FILE = "uniseg_hub.json"
_WRAPPER_TOLERANCE = 1e-4  # export module vs eager model (float32 rounding only; a wiring error is O(1))


# ---------------------------------------------------------------------------------------------------------------
# Instance norm for ONNX: statistics by nested reductions
# ---------------------------------------------------------------------------------------------------------------
class StableInstanceNorm(nn.Module):
    """Instance norm written as ONNX-friendly ops whose statistics stay accurate in float32 in any runtime.

    onnxruntime's ``InstanceNormalization`` and ``ReduceMean`` accumulate over all ``D·H·W`` voxels in float32:
    on zero-padded sliding windows of the tiny reference network the ONNX logits then drift 9e-4 from eager
    PyTorch (which is within 1.1e-5 of float64). Averaging one axis at a time (W, then H, then D: sums of at most a
    few hundred terms) brings that to 1.8e-5. Mathematically identical to ``nn.InstanceNorm3d`` without running
    statistics (biased variance, ``eps`` inside the square root).

    Shapes:
        ``(B, C, *spatial)`` → same.
    """

    def __init__(self, norm: nn.modules.instancenorm._InstanceNorm) -> None:
        super().__init__()
        if norm.track_running_stats:
            raise ValueError("StableInstanceNorm replaces instance norms without running statistics only")
        self.weight, self.bias, self.eps = norm.weight, norm.bias, float(norm.eps)

    @staticmethod
    def _mean(x: torch.Tensor) -> torch.Tensor:
        for axis in range(x.ndim - 1, 1, -1):
            x = x.mean(dim=axis, keepdim=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._mean(x)
        y = centred * torch.rsqrt(self._mean(centred * centred) + self.eps)
        if self.weight is None:
            return y
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


def _use_stable_instance_norm(model: nn.Module) -> int:
    """Replace every instance norm without running statistics by :class:`StableInstanceNorm`, in place."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.instancenorm._InstanceNorm) and not child.track_running_stats:
                setattr(module, name, StableInstanceNorm(child))
                count += 1
    return count


# ---------------------------------------------------------------------------------------------------------------
# Export modules (no Python-side input checks: validated once in build_export_module)
# ---------------------------------------------------------------------------------------------------------------
class _ExportNet(nn.Module):
    """Encoder with one fixed stem, and the decoder's finest head. Shares the parameters of ``model``."""

    def __init__(self, model: nn.Module, in_channels: int) -> None:
        super().__init__()
        stem = model.encoder.stages[0][0]
        if str(in_channels) not in stem.convs:
            raise ValueError(
                f"the network has input stems for {stem.in_channels} channels, got in_channels={in_channels}"
            )
        self.in_channels = int(in_channels)
        self.stem_conv, self.stem_norm, self.stem_act = stem.convs[str(in_channels)], stem.norm, stem.act
        self.stem_rest = nn.Sequential(*list(model.encoder.stages[0])[1:])
        self.stages = nn.ModuleList(list(model.encoder.stages)[1:])
        self.decoder = model.decoder

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every encoder stage output, bottleneck last (``UniSegEncoder.forward`` without ``check_input``)."""
        x = self.stem_rest(self.stem_act(self.stem_norm(self.stem_conv(x))))
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def decode(self, skips: list[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        """Finest logits ``(B, num_classes, D, H, W)`` whatever the model's deep-supervision setting."""
        return self.decoder.heads[-1](self.decoder.forward_features(skips, bottleneck)[-1])


class TaskFixedUniSeg(_ExportNet):
    """UniSeg for one task, baked in as a constant: ``forward(x)`` → logits.

    Args:
        model: a :class:`~uniseg_hub.model.UniSeg` (parameters are shared, not copied).
        task_id: the task (0 ≤ id < ``model.num_tasks``).
        in_channels: input channels (one of ``model.config.input_channels``).

    Shapes:
        ``x`` ``(B, in_channels, *patch_size)`` → ``(B, num_classes, *patch_size)``.
    """

    def __init__(self, model: UniSeg, task_id: int, in_channels: int) -> None:
        super().__init__(model, in_channels)
        if not 0 <= int(task_id) < model.num_tasks:
            raise ValueError(f"task id {task_id} out of range: this model has {model.num_tasks} tasks (0..{model.num_tasks - 1})")
        self.task_id = int(task_id)
        self.prompt = model.prompt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, bottleneck = self.encode(x)
        prompt = self.prompt.prompt.expand(bottleneck.shape[0], -1, -1, -1, -1)
        task_prompts = self.prompt.fusion(torch.cat([bottleneck, prompt], dim=1))
        own = task_prompts[:, self.task_id : self.task_id + 1]
        return self.decode(skips, torch.cat([bottleneck, own], dim=1))


class TaskInputUniSeg(_ExportNet):
    """UniSeg with the task as an input: ``forward(x, task_id)`` → logits, one task per sample.

    Args:
        model: a :class:`~uniseg_hub.model.UniSeg` (parameters are shared, not copied).
        in_channels: input channels (one of ``model.config.input_channels``).

    Shapes:
        ``x`` ``(B, in_channels, *patch_size)``, ``task_id`` ``(B,)`` int64 in ``[0, num_tasks)`` →
        ``(B, num_classes, *patch_size)``. Ids are not range-checked inside the graph (onnxruntime rejects
        out-of-range gather indices); :class:`ExportedModel` checks them.
    """

    def __init__(self, model: UniSeg, in_channels: int) -> None:
        super().__init__(model, in_channels)
        self.prompt = model.prompt

    def forward(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        *skips, bottleneck = self.encode(x)
        prompt = self.prompt.prompt.expand(bottleneck.shape[0], -1, -1, -1, -1)
        task_prompts = self.prompt.fusion(torch.cat([bottleneck, prompt], dim=1))
        index = task_id.reshape(-1, 1, 1, 1, 1).expand(-1, 1, *task_prompts.shape[2:])
        own = torch.gather(task_prompts, 1, index)  # = UniversalPrompt.select, as a traceable gather
        return self.decode(skips, torch.cat([bottleneck, own], dim=1))


class BackboneExport(_ExportNet):
    """The prompt-free :class:`~uniseg_hub.model.UniSegBackbone`: ``forward(x)`` → logits.

    Shapes:
        ``x`` ``(B, in_channels, D, H, W)`` with ``(D, H, W)`` multiples of ``config.divisor`` →
        ``(B, num_classes, D, H, W)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, bottleneck = self.encode(x)
        return self.decode(skips, bottleneck)


# ---------------------------------------------------------------------------------------------------------------
# What an exported file holds
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ExportInfo:
    """Description of an exported graph, stored inside the file.

    Attributes:
        format: ``"onnx"`` or ``"torchscript"``.
        kind: ``"task_fixed"``, ``"task_input"`` or ``"backbone"``.
        in_channels: input channels of the graph.
        num_classes: output channels (logits).
        task_id, task_name: the baked-in task (``task_fixed`` only).
        input_names: graph inputs in order (``["x"]`` or ``["x", "task_id"]``); the output is ``"logits"``.
        dynamic_axes: input name → ``{axis: name}`` of the dynamic axes.
        opset: ONNX opset (``None`` for TorchScript).
        compatible_tasks: task ids whose modalities match ``in_channels`` (when the config names its tasks).
        config: the network's :class:`~uniseg_hub.config.UniSegConfig` as a dict.
    """

    format: str
    kind: str
    in_channels: int
    num_classes: int
    input_names: list[str]
    dynamic_axes: dict[str, dict[str, str]]
    config: dict[str, Any]
    task_id: int | None = None
    task_name: str | None = None
    opset: int | None = None
    compatible_tasks: list[int] = field(default_factory=list)
    torch_version: str = torch.__version__

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ExportInfo":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def uniseg_config(self) -> UniSegConfig:
        return UniSegConfig.from_dict(self.config)


def _resolve(model: nn.Module, task: int | str | None, in_channels: int | None) -> tuple[str, int | None, int]:
    """Graph kind, task id and channel count for ``model``, with clear errors."""
    if isinstance(model, UniSeg):
        kind = "task_input" if task is None else "task_fixed"
    elif isinstance(model, UniSegBackbone):
        if task is not None:
            raise ValueError(f"a UniSegBackbone has no task prompt: export it without a task (got task={task!r})")
        kind = "backbone"
    else:
        raise TypeError(f"export needs a UniSeg or UniSegBackbone, got {type(model).__name__}")
    cfg: UniSegConfig = model.config
    task_id = None if task is None else cfg.task_index(task)
    want = len(cfg.tasks[task_id].modalities) if task_id is not None and cfg.tasks else None
    if in_channels is None:
        in_channels = want if want is not None else cfg.input_channels[0]
    in_channels = int(in_channels)
    if in_channels not in cfg.input_channels:
        raise ValueError(f"the network has input stems for {cfg.input_channels} channels, got in_channels={in_channels}")
    if want is not None and want != in_channels:
        t = cfg.tasks[task_id]
        raise ValueError(f"task {t.name!r} takes {want} channel(s) ({', '.join(t.modalities)}), got in_channels={in_channels}")
    return kind, task_id, in_channels


def _example(model: nn.Module, kind: str, in_channels: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """An example input; batch and (backbone) spatial multiples are 2 so ``torch.export`` keeps them symbolic."""
    cfg: UniSegConfig = model.config
    size = cfg.patch_size if kind != "backbone" else [2 * d for d in cfg.divisor]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, *size, generator=g)
    if kind != "task_input":
        return (x,)
    return x, torch.arange(batch, dtype=torch.long) % cfg.num_tasks


def build_export_module(
    model: nn.Module, task: int | str | None = None, in_channels: int | None = None, stable_norm: bool = False
) -> tuple[nn.Module, ExportInfo, tuple[torch.Tensor, ...]]:
    """The traceable module for ``model``, its :class:`ExportInfo` (format unset) and an example input.

    The module works on a float32 CPU copy of ``model`` in eval mode without gradients (``model`` itself is left
    untouched) and is checked once against ``model``'s eager forward on the first sample of the example (max abs
    difference ≤ 1e-4).

    Args:
        model: a :class:`~uniseg_hub.model.UniSeg` or :class:`~uniseg_hub.model.UniSegBackbone`.
        task: UniSeg only: a task id or name to bake in; ``None`` makes the task an input.
        in_channels: input channels; default: the task's modality count, else the smallest stem.
        stable_norm: use :class:`StableInstanceNorm` in the copy (for ONNX runtimes).
    """
    kind, task_id, in_channels = _resolve(model, task, in_channels)
    eager = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)  # no autograd graph while tracing
    model = copy.deepcopy(eager)
    if stable_norm:
        _use_stable_instance_norm(model)
    if kind == "task_fixed":
        net: nn.Module = TaskFixedUniSeg(model, task_id, in_channels)
    elif kind == "task_input":
        net = TaskInputUniSeg(model, in_channels)
    else:
        net = BackboneExport(model, in_channels)
    net.eval()
    example = _example(model, kind, in_channels)
    one = tuple(t[:1] for t in example)  # checking one sample is enough (and halves the cost for full-size nets)
    with torch.no_grad():
        got = net(*one)
        if kind == "backbone":
            want = eager(one[0])
        else:
            want = eager(one[0], task_id if kind == "task_fixed" else one[1])
        want = want[0] if isinstance(want, (list, tuple)) else want
    diff = float((got - want).abs().max())
    if not diff <= _WRAPPER_TOLERANCE:
        raise RuntimeError(f"the export module differs from the eager model by {diff:.3g} (expected ≤ {_WRAPPER_TOLERANCE})")
    cfg: UniSegConfig = model.config
    dynamic = {"x": {"0": "batch"}}
    if kind == "task_input":
        dynamic["task_id"] = {"0": "batch"}
    info = ExportInfo(
        format="",
        kind=kind,
        in_channels=in_channels,
        num_classes=model.num_classes,
        input_names=["x", "task_id"] if kind == "task_input" else ["x"],
        dynamic_axes=dynamic,
        config=cfg.to_dict(),
        task_id=task_id,
        task_name=cfg.tasks[task_id].name if task_id is not None and cfg.tasks else None,
        compatible_tasks=[i for i, t in enumerate(cfg.tasks) if len(t.modalities) == in_channels],
    )
    return net, info, example


# ---------------------------------------------------------------------------------------------------------------
# Exporters
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of chatty third-party loggers (the ONNX optimiser logs every pass at INFO) for a while."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, before):
            lg.setLevel(lvl)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    task: int | str | None = None,
    in_channels: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportInfo:
    """Export to one self-contained ``.onnx`` file with ``torch.onnx.export(dynamo=True)``.

    Args:
        model, task, in_channels: see :func:`build_export_module`.
        path: output file (weights are stored inside it).
        opset: ONNX opset (default :data:`DEFAULT_OPSET` = 18).

    Returns:
        the :class:`ExportInfo` stored in the file. Batch is dynamic; a backbone's ``(D, H, W)`` too (multiples of
        ``config.divisor``).
    """
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'uniseg_hub[export]'") from e
    net, info, example = build_export_module(model, task, in_channels, stable_norm=True)
    Dim = torch.export.Dim
    batch = Dim("batch", min=1)
    x_dims: dict[int, Any] = {0: batch}
    if info.kind == "backbone":
        for axis, (name, d) in enumerate(zip("dhw", model.config.divisor), start=2):
            x_dims[axis] = d * Dim(name, min=1)
            info.dynamic_axes["x"][str(axis)] = f"{d}*{name}"
    dynamic_shapes: dict[str, Any] = {"x": x_dims}
    if info.kind == "task_input":
        dynamic_shapes["task_id"] = {0: batch}
    with warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
        warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape constraints")
        program = torch.onnx.export(
            net,
            example,
            dynamo=True,
            opset_version=int(opset),
            input_names=info.input_names,
            output_names=["logits"],
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    info.format, info.opset = "onnx", int(opset)
    program.model.metadata_props[_METADATA_KEY] = info.to_json()
    program.save(os.fspath(path), external_data=False)
    logger.info("exported %s (%s, opset %d, %d input channel(s)) to %s", type(model).__name__, info.kind, opset, info.in_channels, path)
    return info


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch.jit's deprecation notices and InstanceNorm's shape-check TracerWarnings (validation only)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated", category=FutureWarning)
        yield


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, task: int | str | None = None, in_channels: int | None = None
) -> ExportInfo:
    """Export to a TorchScript archive with ``torch.jit.trace`` (load it with :func:`load_exported` or ``torch.jit.load``).

    The trace is checked on a second input of another batch size (and, for a backbone, another spatial size).
    Instance norms stay PyTorch's own kernel (TorchScript runs on PyTorch).
    ``torch.jit`` is deprecated upstream in favour of ``torch.export``; prefer ONNX for new deployments.
    """
    net, info, example = build_export_module(model, task, in_channels)
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(net, example)
    if info.kind == "backbone":  # another batch and spatial size than the example (batch 2, 2 x divisor)
        info.dynamic_axes["x"].update({"2": "D", "3": "H", "4": "W"})
        second = (torch.randn(1, info.in_channels, *[m * d for m, d in zip((1, 3, 1), model.config.divisor)]),)
    else:
        second = _example(model, info.kind, info.in_channels, batch=1, seed=1)
    with torch.no_grad():
        diff = float((traced(*second) - net(*second)).abs().max())
    if not diff <= _WRAPPER_TOLERANCE:
        raise RuntimeError(f"the traced graph does not generalise to input {tuple(second[0].shape)}: differs by {diff:.3g}")
    info.format = "torchscript"
    with _quiet_jit():
        torch.jit.save(traced, os.fspath(path), _extra_files={_TS_EXTRA_FILE: info.to_json()})
    logger.info("exported %s (%s, %d input channel(s)) to TorchScript %s", type(model).__name__, info.kind, info.in_channels, path)
    return info


def export_model(model: nn.Module, format: str, path: str | os.PathLike, **kwargs: Any) -> ExportInfo:
    """:func:`export_onnx` or :func:`export_torchscript` by name (``format`` in :data:`EXPORT_FORMATS`)."""
    if format == "onnx":
        return export_onnx(model, path, **kwargs)
    if format == "torchscript":
        if kwargs.pop("opset", None) not in (None, DEFAULT_OPSET):
            raise ValueError("opset applies to ONNX export only")
        return export_torchscript(model, path, **kwargs)
    raise ValueError(f"unknown export format {format!r}; expected one of {list(EXPORT_FORMATS)}")


# ---------------------------------------------------------------------------------------------------------------
# Running an exported file
# ---------------------------------------------------------------------------------------------------------------
class ExportedModel(nn.Module):
    """An exported graph as a callable ``model(x, task_id=None)`` → logits tensor (on ``x``'s device).

    Plugs into :func:`~uniseg_hub.inference.sliding_window_inference` and
    :class:`~uniseg_hub.inference.UniSegPredictor` like the eager network (``.config`` is the stored config).
    Inputs are checked here, with clear errors, since the graph does not check them.

    Args:
        info: the stored :class:`ExportInfo`.
        session: an ``onnxruntime.InferenceSession`` (ONNX), or
        module: a ``torch.jit.ScriptModule`` (TorchScript).
    """

    def __init__(self, info: ExportInfo, session: Any = None, module: torch.jit.ScriptModule | None = None) -> None:
        super().__init__()
        if (session is None) == (module is None):
            raise ValueError("pass exactly one of session (ONNX) or module (TorchScript)")
        self.info = info
        self.config = info.uniseg_config
        self.session = session
        self.module = module

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def _check(self, x: torch.Tensor) -> None:
        check_volume(x, self, "x")
        if x.shape[1] != self.info.in_channels:
            raise ValueError(f"this exported graph takes {self.info.in_channels} input channel(s), got shape {tuple(x.shape)}")
        size = list(x.shape[2:])
        if self.info.kind != "backbone" and size != self.config.patch_size:
            raise ValueError(
                f"this exported UniSeg graph takes inputs of exactly {tuple(self.config.patch_size)} (D, H, W), got "
                f"{tuple(size)}; segment larger volumes with uniseg_hub.inference.sliding_window_inference"
            )
        if self.info.kind == "backbone" and any(s % d for s, d in zip(size, self.config.divisor)):
            raise ValueError(f"spatial size {tuple(size)} is not a multiple of {tuple(self.config.divisor)}")

    def _task(self, x: torch.Tensor, task_id: Any) -> torch.Tensor | None:
        kind = self.info.kind
        if kind == "backbone":
            if task_id is not None:
                raise ValueError("this exported backbone has no task input; call it as model(x)")
            return None
        if task_id is None:
            if kind == "task_input":
                raise ValueError("this exported graph takes the task as an input: call model(x, task_id)")
            return None
        t = as_task_tensor(task_id, x.shape[0], self.config.num_tasks, torch.device("cpu"))
        if kind == "task_fixed":
            if bool((t != self.info.task_id).any()):
                raise ValueError(
                    f"this exported graph is fixed to task {self.info.task_id} ({self.info.task_name}), got task_id {t.tolist()}"
                )
            return None
        return t.contiguous()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, task_id: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes, D, H, W)`` for ``x`` ``(B, in_channels, D, H, W)`` (float32)."""
        self._check(x)
        task = self._task(x, task_id)
        if self.module is not None:
            args = (x,) if task is None else (x, task.to(x.device))
            return self.module(*args)
        feeds = {"x": x.detach().cpu().contiguous().numpy()}
        if task is not None:
            feeds["task_id"] = task.numpy()
        (out,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


def load_exported(path: str | os.PathLike, providers: Sequence[str] | None = None, map_location: str | torch.device = "cpu") -> ExportedModel:
    """Load a file written by :func:`export_onnx` or :func:`export_torchscript` (told apart by content).

    Args:
        path: the ``.onnx`` file or TorchScript archive.
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
        map_location: device for a TorchScript module. Load TorchScript only from sources you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path}")
    if zipfile.is_zipfile(path):
        extra = {_TS_EXTRA_FILE: ""}
        with _quiet_jit():
            module = torch.jit.load(path, map_location=map_location, _extra_files=extra)
        if not extra[_TS_EXTRA_FILE]:
            raise ValueError(f"{path} is a TorchScript archive without uniseg_hub export metadata ({_TS_EXTRA_FILE})")
        return ExportedModel(ExportInfo.from_json(extra[_TS_EXTRA_FILE]), module=module.eval())
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("running ONNX files needs onnxruntime: pip install 'uniseg_hub[export]'") from e
    try:
        session = ort.InferenceSession(path, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} is neither a TorchScript archive nor a readable ONNX model: {e}") from e
    meta = session.get_modelmeta().custom_metadata_map.get(_METADATA_KEY)
    if meta is None:
        raise ValueError(f"{path} is an ONNX model without uniseg_hub export metadata (metadata_props[{_METADATA_KEY!r}])")
    return ExportedModel(ExportInfo.from_json(meta), session=session)


def verify_export(
    exported: ExportedModel | str | os.PathLike, model: nn.Module, atol: float = 1e-4, batch: int = 1, seed: int = 0
) -> float:
    """Max abs difference between an exported graph and the eager ``model`` on a random batch.

    ``batch`` defaults to 1, unlike the export's example batch of 2, so the dynamic batch axis is exercised.
    Task-input graphs get task ids ``0, 1, ...`` (mod ``num_tasks``). Raises ``ValueError`` above ``atol``.
    """
    if not isinstance(exported, ExportedModel):
        exported = load_exported(exported)
    info = exported.info
    model = copy.deepcopy(model).float().cpu().eval()
    x, *rest = _example(model, info.kind, info.in_channels, batch=batch, seed=seed)
    with torch.no_grad():
        if info.kind == "backbone":
            want, got = model(x), exported(x)
        else:
            task = rest[0] if rest else torch.full((batch,), info.task_id, dtype=torch.long)
            want, got = model(x, task), exported(x, task)
    want = want[0] if isinstance(want, (list, tuple)) else want
    diff = float((got.float() - want).abs().max())
    if not diff <= atol:
        raise ValueError(f"exported {info.format} graph differs from the eager model by {diff:.3g} (expected ≤ {atol})")
    logger.info("exported %s graph matches the eager model: max abs difference %.3g (≤ %g)", info.format, diff, atol)
    return diff
