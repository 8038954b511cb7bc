"""Writing and reading exported graphs: ONNX (onnxruntime, TensorRT, ...) and TorchScript.

Every graph takes one input channel count (the stem is chosen at export time), returns the finest logits
``(B, num_classes, D, H, W)`` (deep supervision is not exported) and has a dynamic batch axis. UniSeg graphs take
exactly ``config.patch_size`` (the prompt is sized to it; use :mod:`uniseg_hub.inference` for whole volumes); the
ONNX backbone graph also takes any multiple of ``config.divisor`` (``D = 16·d`` ...), the TorchScript one any size
the eager backbone takes. ONNX files use opset :data:`DEFAULT_OPSET` = 18, the opset torch's exporter emits natively
(onnxscript torchlib; no version conversion), run by onnxruntime ≥ 1.14 and TensorRT ≥ 8.6.

The export's description (:class:`~uniseg_hub.export.modules.ExportInfo`: kind, task, channels, config ...) is
stored inside the file (ONNX ``metadata_props["uniseg_hub"]``, TorchScript extra file ``uniseg_hub.json``);
:func:`load_exported` reads it back into an :class:`ExportedModel`, a callable ``f(x, task_id) -> logits`` that also
plugs into :func:`~uniseg_hub.inference.sliding_window_inference` and :class:`~uniseg_hub.inference.UniSegPredictor`.

Example:
    >>> export_onnx(model, "uniseg_liver.onnx", task="liver")               # doctest: +SKIP
    >>> net = load_exported("uniseg_liver.onnx")                           # doctest: +SKIP
    >>> net(torch.randn(2, 1, *model.config.patch_size)).shape             # doctest: +SKIP
    torch.Size([2, 4, 64, 192, 192])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_file
from ..models.encoder import check_volume
from ..models.prompt import as_task_tensor
from .modules import WRAPPER_TOLERANCE, ExportInfo, build_export_module, example_inputs

__all__ = ['DEFAULT_OPSET', 'EXPORT_FORMATS', 'export_onnx', 'export_torchscript', 'export_model', 'ExportedModel', 'load_exported', 'verify_export']

logger = logging.getLogger(__name__)

#: ONNX opset of exported files: torch's dynamo exporter emits opset 18 natively (torchlib).
DEFAULT_OPSET = 18
EXPORT_FORMATS = ("onnx", "torchscript")
_METADATA_KEY = "uniseg_hub"
_TS_EXTRA_FILE = "uniseg_hub.json"

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
    with atomic_file(path) as tmp:  # a kill leaves the old file or the new one, never a partial one
        program.save(os.fspath(tmp), external_data=False)
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
        second = example_inputs(model, info.kind, info.in_channels, batch=1, seed=1)
    with torch.no_grad():
        diff = float((traced(*second) - net(*second)).abs().max())
    if not diff <= WRAPPER_TOLERANCE:
        raise RuntimeError(f"the traced graph does not generalise to input {tuple(second[0].shape)}: differs by {diff:.3g}")
    info.format = "torchscript"
    with _quiet_jit(), atomic_file(path) as tmp:
        torch.jit.save(traced, os.fspath(tmp), _extra_files={_TS_EXTRA_FILE: info.to_json()})
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
    x, *rest = example_inputs(model, info.kind, info.in_channels, batch=batch, seed=seed)
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
