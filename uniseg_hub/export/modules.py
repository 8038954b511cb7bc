"""The traceable modules that exports record.

:class:`~uniseg_hub.models.uniseg.UniSeg` validates its inputs in Python (input size, channel count, task ids read
on the host), which neither ``torch.export`` nor ``torch.jit.trace`` can record. The modules here call the network's
own check-free forward (``forward_unchecked``, the one ``torch.compile`` compiles too) on a private eval-mode copy;
:func:`build_export_module` validates the arguments once and checks that the module reproduces the eager model.

* :class:`TaskFixedUniSeg` — ``logits = f(x)``: one task baked in as a constant.
* :class:`TaskInputUniSeg` — ``logits = f(x, task_id)`` with ``task_id`` ``(B,)`` int64, one task per sample.
* :class:`BackboneExport` — ``logits = f(x)`` for :class:`~uniseg_hub.models.uniseg.UniSegBackbone`.

In ONNX graphs instance norms are written as nested means (:class:`StableInstanceNorm`), which keeps onnxruntime
within float32 rounding of PyTorch on zero-padded sliding windows.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import UniSegConfig
from ..models.uniseg import UniSeg, UniSegBackbone
from ..models.surgery import replace_modules

__all__ = ['ExportInfo', 'TaskFixedUniSeg', 'TaskInputUniSeg', 'BackboneExport', 'StableInstanceNorm', 'build_export_module']

logger = logging.getLogger(__name__)

WRAPPER_TOLERANCE = 1e-4  # export module vs eager model (float32 rounding only; a wiring error is O(1))



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
    return replace_modules(
        model, lambda m: isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats, StableInstanceNorm
    )


# ---------------------------------------------------------------------------------------------------------------
# Export modules: the network's own forward_unchecked (validated once in build_export_module)
# ---------------------------------------------------------------------------------------------------------------
class _ExportNet(nn.Module):
    """Holds ``model`` (parameters shared, not copied) and the input channel count the graph is recorded for."""

    def __init__(self, model: nn.Module, in_channels: int) -> None:
        super().__init__()
        if int(in_channels) not in model.config.input_channels:
            raise ValueError(
                f"the network has input stems for {model.config.input_channels} channels, got in_channels={in_channels}"
            )
        if model.deep_supervision:
            raise ValueError("export records the finest logits only: call model.set_deep_supervision(False) first "
                             "(build_export_module does this on its own copy)")
        self.in_channels = int(in_channels)
        self.model = model


class TaskFixedUniSeg(_ExportNet):
    """UniSeg for one task, baked in as a constant: ``forward(x)`` → logits.

    Args:
        model: a :class:`~uniseg_hub.models.uniseg.UniSeg` without deep supervision (parameters are shared).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        task = torch.full((x.shape[0],), self.task_id, dtype=torch.long, device=x.device)
        return self.model.forward_unchecked(x, task)


class TaskInputUniSeg(_ExportNet):
    """UniSeg with the task as an input: ``forward(x, task_id)`` → logits, one task per sample.

    Args:
        model: a :class:`~uniseg_hub.models.uniseg.UniSeg` without deep supervision (parameters are shared).
        in_channels: input channels (one of ``model.config.input_channels``).

    Shapes:
        ``x`` ``(B, in_channels, *patch_size)``, ``task_id`` ``(B,)`` int64 in ``[0, num_tasks)`` →
        ``(B, num_classes, *patch_size)``. Ids are not range-checked inside the graph (onnxruntime rejects
        out-of-range gather indices); :class:`~uniseg_hub.export.io.ExportedModel` checks them.
    """

    def forward(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        return self.model.forward_unchecked(x, task_id)


class BackboneExport(_ExportNet):
    """The prompt-free :class:`~uniseg_hub.models.uniseg.UniSegBackbone`: ``forward(x)`` → logits.

    Shapes:
        ``x`` ``(B, in_channels, D, H, W)`` with ``(D, H, W)`` multiples of ``config.divisor`` →
        ``(B, num_classes, D, H, W)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_unchecked(x)


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


def example_inputs(model: nn.Module, kind: str, in_channels: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
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
        model: a :class:`~uniseg_hub.models.uniseg.UniSeg` or :class:`~uniseg_hub.models.uniseg.UniSegBackbone`.
        task: UniSeg only: a task id or name to bake in; ``None`` makes the task an input.
        in_channels: input channels; default: the task's modality count, else the smallest stem.
        stable_norm: use :class:`StableInstanceNorm` in the copy (for ONNX runtimes).
    """
    kind, task_id, in_channels = _resolve(model, task, in_channels)
    eager = copy.deepcopy(model).float().cpu().eval().requires_grad_(False)  # no autograd graph while tracing
    model = copy.deepcopy(eager)
    model.set_deep_supervision(False)
    if stable_norm:
        _use_stable_instance_norm(model)
    if kind == "task_fixed":
        net: nn.Module = TaskFixedUniSeg(model, task_id, in_channels)
    elif kind == "task_input":
        net = TaskInputUniSeg(model, in_channels)
    else:
        net = BackboneExport(model, in_channels)
    net.eval()
    example = example_inputs(model, kind, in_channels)
    one = tuple(t[:1] for t in example)  # checking one sample is enough (and halves the cost for full-size nets)
    with torch.no_grad():
        got = net(*one)
        if kind == "backbone":
            want = eager(one[0])
        else:
            want = eager(one[0], task_id if kind == "task_fixed" else one[1])
        want = want[0] if isinstance(want, (list, tuple)) else want
    diff = float((got - want).abs().max())
    if not diff <= WRAPPER_TOLERANCE:
        raise RuntimeError(f"the export module differs from the eager model by {diff:.3g} (expected ≤ {WRAPPER_TOLERANCE})")
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
