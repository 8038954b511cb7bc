"""Speed and memory options for UniSeg networks, each opt-in, output-preserving and measured in ``benchmarks/``.

:func:`optimize_for_inference` and :func:`optimize_for_training` rewrite a built model **in place** without
changing its state-dict keys or parameters (the same ``nn.Parameter`` objects are kept, so optimizers and
loaded weights stay valid):

* ``fast_norm`` — instance norm (MONAI's ``nn.InstanceNorm3d``) computed with ``group_norm`` (one group per
  channel, identical maths) followed by an in-place activation: about 2x faster than ``instance_norm`` on CPU,
  which runs ``batch_norm`` over a reshaped copy.
* ``fused_upsample`` — the decoder's kernel==stride transposed conv and the skip concatenation done as one
  matrix product written straight into the concatenation buffer (:func:`~uniseg_hub.models.layers.upsample_concat`);
  about 3x faster for that step, bit-identical.
* ``pointwise_heads`` — the 1x1x1 segmentation heads as a matrix product (no oneDNN layout reorder).
* ``channels_last`` — ``torch.channels_last_3d`` memory format. For inference in eager mode measured slower on
  CPU (instance norm then copies; ``compile`` gets channels-last convolutions without that). For training,
  ``optimize_for_training(channels_last=True)`` pairs it with the in-place norm below: the fastest (1.35x eager)
  and, with checkpointing, the leanest (−44% peak memory) fine-tuning step measured.
* ``compile`` — ``torch.compile`` of the whole network as one graph (inductor freezing for inference: oneDNN
  convolutions with pre-packed weights in channels-last layout, norm+activation fused), with an eager fallback
  when compilation fails. The fastest CPU forward measured.

* ``inplace_norm_act`` (training) — :class:`InplaceInstanceNormAct`: instance norm + LeakyReLU written over the
  conv output, storing one activation per block instead of two (the InPlace-ABN trick), copy-free in both
  layouts.

:func:`set_grad_checkpointing` enables activation checkpointing in the encoder **and** the decoder stages
(optionally only the finest ``levels`` resolution levels).

Example:
    >>> model = optimize_for_inference(UniSeg(UniSegConfig.uniseg_11task(base_num_features=4,
    ...                                                                  patch_size=[16, 32, 64])).eval())
    >>> with torch.inference_mode():
    ...     model(torch.zeros(1, 1, 16, 32, 64), task_id=0).shape
    torch.Size([1, 4, 16, 32, 64])
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import DecoderStage, SegmentationHeads
from .layers import GradCheckpointing
from .surgery import replace_modules

__all__ = [
    "CompiledForward",
    "FastInstanceNorm3d",
    "InplaceInstanceNormAct",
    "PointwiseConv3d",
    "optimize_for_inference",
    "optimize_for_training",
    "is_compiled",
    "set_grad_checkpointing",
    "try_compile",
]

log = logging.getLogger(__name__)


class FastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no running statistics) computed as ``group_norm`` with one group per channel.

    Same parameters and state-dict keys (``weight``, ``bias``) as the module it replaces, same outputs
    (float32 rounding aside, ~1e-6). Inputs in ``channels_last_3d`` layout go through ``instance_norm``, whose
    reduction is exact there (``group_norm``'s channels-last kernel sums naively and loses ~1e-3).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or not x.is_contiguous() or x.shape[0] == 0:
            return super().forward(x)
        return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)

    @classmethod
    def from_instance_norm(cls, norm: nn.InstanceNorm3d) -> "FastInstanceNorm3d":
        if norm.track_running_stats:
            raise ValueError("FastInstanceNorm3d replaces instance norm without running statistics only")
        new = cls(norm.num_features, eps=norm.eps, affine=norm.affine, track_running_stats=False)
        if norm.affine:
            new.weight, new.bias = norm.weight, norm.bias  # the same Parameter objects
        return new.train(norm.training)


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 ``Conv3d`` computed as one matrix product ``(C_out, C_in) @ (B, C_in, D*H*W)``; same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or not x.is_contiguous() or self.groups != 1:
            return super().forward(x)
        b, c, *size = x.shape
        w = self.weight.reshape(self.out_channels, c).to(x.dtype)
        y = torch.matmul(w, x.reshape(b, c, -1))
        if self.bias is not None:
            y = y + self.bias.to(x.dtype).view(1, -1, 1)
        return y.view(b, self.out_channels, *size)

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> "PointwiseConv3d":
        new = cls(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None, device="meta")
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new.train(conv.training)


def _channel_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A copy-free 3-D view of a contiguous or ``channels_last_3d`` 5-D tensor and the axis of its voxels:
    ``(B, C, N)``, 2 for contiguous; ``(B, N, C)``, 1 for channels-last."""
    b, c = x.shape[:2]
    if x.is_contiguous():
        return x.view(b, c, -1), 2
    return x.permute(0, 2, 3, 4, 1).reshape(b, -1, c), 1  # a view: channels-last is (B, D, H, W, C) in memory


def _from_rows(rows: torch.Tensor, like: torch.Tensor, voxel_axis: int) -> torch.Tensor:
    """Inverse of :func:`_channel_rows` (a view in ``like``'s shape and layout)."""
    if voxel_axis == 2:
        return rows.view(like.shape)
    b, c, *size = like.shape
    return rows.view(b, *size, c).permute(0, 4, 1, 2, 3)


class _InstanceNormLeakyReLU(torch.autograd.Function):
    """Instance norm (affine) + LeakyReLU written over the input, saving only the output (InPlace-ABN).

    Backward reconstructs the pre-activation from the output (LeakyReLU with slope ``s`` is inverted by slope
    ``1/s``) and the normalised input from it (``(z - bias) / weight``), so it needs neither the norm's input
    nor a separate activation input: one stored tensor per conv block instead of two. Works on contiguous and
    ``channels_last_3d`` tensors without layout copies (per-channel reductions are Welford / matrix products).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, slope: float):  # type: ignore[override]
        rows, axis = _channel_rows(x)
        var, mean = torch.var_mean(rows, dim=axis, correction=0)  # (B, C)
        rstd = torch.rsqrt(var + eps)
        scale = weight * rstd
        torch.addcmul((bias - mean * scale).unsqueeze(axis), rows, scale.unsqueeze(axis), out=rows)
        F.leaky_relu_(x, slope)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x, weight, bias, rstd)
        ctx.slope = slope
        return x

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        y5, weight, bias, rstd = ctx.saved_tensors
        y, axis = _channel_rows(y5)
        b, c = y5.shape[:2]
        n = y.shape[axis]
        memory_format = torch.contiguous_format if axis == 2 else torch.channels_last_3d
        g, _ = _channel_rows(grad_out.contiguous(memory_format=memory_format))
        gz = torch.ops.aten.leaky_relu_backward(g, y, ctx.slope, True)
        xhat = F.leaky_relu(y, 1.0 / ctx.slope)  # the pre-activation z = weight * xhat + bias
        inv = weight.reciprocal().view(1, c).unsqueeze(axis)
        torch.addcmul((-bias).view(1, c).unsqueeze(axis) * inv, xhat, inv, out=xhat)
        sum_gz = gz.sum(axis)
        if axis == 2:  # per-row dot products as (B, C, 1, N) @ (B, C, N, 1)
            sum_gz_xhat = torch.matmul(gz.unsqueeze(-2), xhat.unsqueeze(-1)).view(b, c)
        else:  # the diagonal of (B, C, N) @ (B, N, C): C^2 N flops, no (N, C) temporary
            sum_gz_xhat = torch.matmul(gz.transpose(1, 2), xhat).diagonal(dim1=1, dim2=2)
        # d x = rstd * weight * (gz - mean(gz) - xhat * mean(gz * xhat)), computed in gz's buffer
        gz.sub_((sum_gz / n).unsqueeze(axis)).addcmul_(xhat, (sum_gz_xhat / -n).unsqueeze(axis))
        gz.mul_((rstd * weight).unsqueeze(axis))
        return _from_rows(gz, y5, axis), sum_gz_xhat.sum(0), sum_gz.sum(0), None, None


class InplaceInstanceNormAct(nn.InstanceNorm3d):
    """Affine instance norm **and** the following LeakyReLU in one in-place step that stores only its output
    for the backward pass (the InPlace-ABN trick): per conv block autograd keeps one activation instead of two.

    Same parameters and state-dict keys as the ``nn.InstanceNorm3d`` it replaces (the block's ``act`` becomes
    ``nn.Identity``). It overwrites its input, the conv output, which nothing else reads. Gradients are exact up
    to float32 rounding of the reconstruction ``(z - bias) / weight``; while any ``|weight|`` is below
    ``min_weight`` (reconstruction ill-conditioned) and in inference it runs the ordinary computation.
    """

    min_weight = 1e-3

    def __init__(self, num_features: int, eps: float = 1e-5, negative_slope: float = 0.01) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_inplace = (
            torch.is_grad_enabled() and x.dim() == 5 and x.shape[0] > 0
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d))
            and not torch.is_autocast_enabled(x.device.type) and x.requires_grad and x.grad_fn is not None
            and bool(self.weight.detach().abs().min() >= self.min_weight)
        )
        if use_inplace:
            return _InstanceNormLeakyReLU.apply(x, self.weight, self.bias, self.eps, self.negative_slope)
        if x.dim() == 5 and x.is_contiguous():
            y = F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        else:  # instance_norm's reduction is exact in channels-last too (group_norm's loses ~1e-3 there)
            y = F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        return F.leaky_relu_(y, self.negative_slope)

    @classmethod
    def from_norm_act(cls, norm: nn.InstanceNorm3d, act: nn.LeakyReLU) -> "InplaceInstanceNormAct":
        new = cls(norm.num_features, eps=norm.eps, negative_slope=act.negative_slope)
        new.weight, new.bias = norm.weight, norm.bias  # the same Parameter objects
        return new.train(norm.training)


def _replace_norm_act(model: nn.Module) -> int:
    """Fuse every (affine instance norm, LeakyReLU) pair held as ``.norm`` / ``.act`` of a block."""
    count = 0
    for block in list(model.modules()):
        norm, act = getattr(block, "norm", None), getattr(block, "act", None)
        if (
            isinstance(norm, nn.InstanceNorm3d) and not isinstance(norm, InplaceInstanceNormAct)
            and norm.affine and not norm.track_running_stats and type(act) is nn.LeakyReLU
        ):
            block.norm, block.act = InplaceInstanceNormAct.from_norm_act(norm, act), nn.Identity()
            count += 1
    return count


def _replace_norms(model: nn.Module) -> int:
    return replace_modules(
        model, lambda m: type(m) is nn.InstanceNorm3d and not m.track_running_stats, FastInstanceNorm3d.from_instance_norm
    )


def _replace_heads(model: nn.Module) -> int:
    def is_pointwise_head(m: nn.Module) -> bool:
        return type(m) is nn.Conv3d and tuple(m.kernel_size) == (1, 1, 1) and m.groups == 1

    return sum(replace_modules(heads, is_pointwise_head, PointwiseConv3d.from_conv)
               for heads in [m for m in model.modules() if isinstance(m, SegmentationHeads)])


def _set_fused_upsample(model: nn.Module, enable: bool) -> int:
    stages = [m for m in model.modules() if isinstance(m, DecoderStage)]
    for stage in stages:
        stage.fused_upsample = bool(enable)
    return len(stages)


def set_grad_checkpointing(model: nn.Module, enable: bool = True, *, levels: int | None = None) -> None:
    """Activation checkpointing for every encoder and decoder stage of ``model`` (a UniSeg network or part).

    Takes effect in training mode with gradients enabled; outputs and gradients are unchanged. ``levels``
    checkpoints only the finest ``levels`` resolution levels (:class:`~uniseg_hub.models.layers.GradCheckpointing`);
    the memory/time trade-off is measured by ``benchmarks/train_step.py``.
    """
    found = False
    for m in model.modules():
        if isinstance(m, GradCheckpointing):
            m.set_grad_checkpointing(enable, levels=levels)
            found = True
    if not found:
        raise ValueError(f"{type(model).__name__} has no encoder or decoder that supports gradient checkpointing")


def _warn_compile_failed(exc: BaseException) -> None:
    log.warning("torch.compile failed (%s: %s); using the eager model", type(exc).__name__, str(exc)[:500])


class CompiledForward:
    """A ``torch.compile``-d function that falls back to the eager one, for good, the first time compiling or
    running the compiled code fails (logged as a warning). Installed by :func:`try_compile`.

    With ``freeze=True``, calls without autograd (``torch.inference_mode`` / ``no_grad``) compile with inductor's
    *freezing*: weights become constants, folded and pre-packed for oneDNN convolutions in ``channels_last``
    layout (the fast CPU path measured in ``benchmarks/forward.py``). Frozen weights are read at the first such
    call, so compile after loading weights. If a parameter or buffer of ``owner`` is modified in place after that
    (``load_state_dict``, an optimizer step), the frozen graph would be stale: the change is detected (tensor
    version counters; not for weights created under ``inference_mode``, which keep none) and the eager forward
    is used from then on, with a warning.
    """

    def __init__(
        self, fn: Callable[..., Any], freeze: bool = False, owner: nn.Module | None = None, **compile_kwargs: Any
    ) -> None:
        self.eager, self.freeze, self.owner = fn, freeze, owner
        self._frozen_versions: list[int] | None = None
        self.compiled: Callable[..., Any] | None = None
        try:
            self.compiled = torch.compile(fn, **compile_kwargs)
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown backend or option
            _warn_compile_failed(exc)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        import torch._inductor.config as inductor_config

        freeze = self.freeze and not torch.is_grad_enabled()  # grad mode is a dynamo guard: no stale frozen graph
        if freeze and self.owner is not None:
            # (inference tensors, e.g. weights created under inference_mode, keep no version counter)
            tensors = (*self.owner.parameters(), *self.owner.buffers())
            versions = [-1 if t.is_inference() else t._version for t in tensors]
            if self._frozen_versions is None:
                self._frozen_versions = versions
            elif versions != self._frozen_versions:
                log.warning(
                    "weights of %s changed after torch.compile froze them; using the eager model from now on "
                    "(compile a fresh model, or call torch._dynamo.reset() and try_compile again)",
                    type(self.owner).__name__,
                )
                self.compiled = None
                return self.eager(*args, **kwargs)
        if torch.is_inference_mode_enabled():
            # dynamo guards on the inputs' dispatch keys: an input made outside inference mode (a warm-up tensor, a
            # view of a normal tensor) and one made inside would compile two graphs; give it one kind of input
            args = tuple(a.clone() if isinstance(a, torch.Tensor) and not a.is_inference() else a for a in args)
        try:
            with inductor_config.patch(freezing=True) if freeze else contextlib.nullcontext():
                return self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
            _warn_compile_failed(exc)
            self.compiled = None
            return self.eager(*args, **kwargs)


def try_compile(
    model: nn.Module, example_inputs: Sequence[Any] | None = None, *, freeze: bool = False, **compile_kwargs: Any
) -> bool:
    """Compile ``model`` in place with ``torch.compile(**compile_kwargs)``; with ``example_inputs`` run once now.

    UniSeg networks compile their ``forward_unchecked`` (encoder, prompt and decoder as one graph) while the input
    checks stay in eager ``forward``: the task id reaches the graph as a tensor, so changing it never
    recompiles. Other modules compile whole (``model.compile``). ``freeze``: see :class:`CompiledForward`.
    Compiling happens at the first call; if it fails (it needs a C++ compiler on CPU and Triton on CUDA) a
    warning is logged and the eager forward is used. Returns ``False`` if that already happened while running
    ``example_inputs``.
    """
    impl = getattr(type(model), "forward_unchecked", None)
    if impl is None:
        try:
            model.compile(**compile_kwargs)
        except Exception as exc:  # noqa: BLE001
            _warn_compile_failed(exc)
            return False
        if example_inputs is not None:
            with torch.inference_mode(not model.training):
                model(*example_inputs)
        return True
    compiled = CompiledForward(impl.__get__(model), freeze=freeze, owner=model, **compile_kwargs)
    model.__dict__["forward_unchecked"] = compiled  # an instance attribute shadows the method; not in the state dict
    if example_inputs is not None:
        with torch.inference_mode(not model.training):
            model(*example_inputs)
    return compiled.compiled is not None


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`try_compile` compiled ``model`` and compilation has not fallen back to eager."""
    fwd = model.__dict__.get("forward_unchecked")
    return isinstance(fwd, CompiledForward) and fwd.compiled is not None


def _optimize(
    model: nn.Module,
    *,
    fast_norm: bool,
    fused_upsample: bool,
    pointwise_heads: bool,
    channels_last: bool,
    compile: bool,
    example_inputs: Sequence[Any] | None,
    compile_kwargs: dict[str, Any] | None,
    freeze: bool = False,
) -> nn.Module:
    done = []
    if fast_norm:
        done.append(f"{_replace_norms(model)} fast norms")
    if fused_upsample:
        done.append(f"{_set_fused_upsample(model, True)} fused upsample+concat")
    if pointwise_heads:
        done.append(f"{_replace_heads(model)} pointwise heads")
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
        done.append("channels_last_3d")
    if compile:
        ok = try_compile(model, example_inputs, freeze=freeze, **(compile_kwargs or {}))
        done.append("compiled" if ok else "compile failed")
    log.info("optimized %s: %s", type(model).__name__, ", ".join(done) or "nothing")
    return model


def optimize_for_inference(
    model: nn.Module,
    *,
    fast_norm: bool = True,
    fused_upsample: bool = True,
    pointwise_heads: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    example_inputs: Sequence[Any] | None = None,
    compile_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Rewrite ``model`` in place for faster inference and return it (state-dict keys unchanged).

    The defaults are the options that won in ``benchmarks/forward.py`` on CPU (outputs within ~1e-5 of the
    eager network). Run the model under ``torch.inference_mode()``. With ``channels_last``, feed inputs in
    ``torch.channels_last_3d`` format too.

    Args:
        model: a UniSeg network (or any module using ``nn.InstanceNorm3d`` / UniSeg decoder stages).
        fast_norm: instance norm through ``group_norm``.
        fused_upsample: transposed conv + skip concatenation in one pass.
        pointwise_heads: 1x1x1 heads as matrix products.
        channels_last: convert parameters to ``channels_last_3d``.
        compile: ``torch.compile`` the network as one graph with inductor freezing (weights folded and pre-packed
            for oneDNN in channels-last layout; eager fallback on failure, see :func:`try_compile`). The fastest
            CPU forward in ``benchmarks/forward.py``; compiling takes about 15-25 s at the first call (2 cores).
        example_inputs: positional inputs to compile with now (otherwise compilation happens on the first call).
        compile_kwargs: keyword arguments for ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
    """
    return _optimize(
        model,
        fast_norm=fast_norm,
        fused_upsample=fused_upsample,
        pointwise_heads=pointwise_heads,
        channels_last=channels_last,
        compile=compile,
        example_inputs=example_inputs,
        compile_kwargs=compile_kwargs,
        freeze=True,
    )


def optimize_for_training(
    model: nn.Module,
    *,
    fast_norm: bool = True,
    fused_upsample: bool = True,
    pointwise_heads: bool = True,
    grad_checkpointing: bool = False,
    inplace_norm_act: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    compile_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Rewrite ``model`` in place for faster fine-tuning (same outputs and gradients) and return it.

    Args:
        model: a UniSeg network.
        fast_norm, fused_upsample, pointwise_heads, compile, compile_kwargs: as :func:`optimize_for_inference`.
        grad_checkpointing: activation checkpointing in encoder and decoder (:func:`set_grad_checkpointing`,
            per stage, every level): much lower peak memory for one extra forward per step.
        inplace_norm_act: :class:`InplaceInstanceNormAct` for every instance norm + LeakyReLU pair: one stored
            activation per conv block instead of two (lower peak memory, with or without checkpointing);
            gradients equal up to float32 rounding.
        channels_last: parameters (and so activations) in ``torch.channels_last_3d``, oneDNN's native layout:
            no transient layout copies around each convolution (-0.85 GiB forward / -0.3 GiB backward for one
            full-resolution conv). Implies ``inplace_norm_act`` (the only norm here that is exact and copy-free in
            that layout) and turns off ``fused_upsample`` and ``pointwise_heads`` (contiguous-only kernels).
            With ``grad_checkpointing``: the lowest-memory training setting measured (``benchmarks/README.md``).
    """
    if channels_last:
        inplace_norm_act, fused_upsample, pointwise_heads = True, False, False
    if inplace_norm_act:
        log.info("optimized %s: %d in-place norm+act", type(model).__name__, _replace_norm_act(model))
    _optimize(
        model,
        fast_norm=fast_norm,
        fused_upsample=fused_upsample,
        pointwise_heads=pointwise_heads,
        channels_last=channels_last,
        compile=False,
        example_inputs=None,
        compile_kwargs=None,
    )
    if grad_checkpointing:
        set_grad_checkpointing(model, True)
    if compile:
        try_compile(model, None, **(compile_kwargs or {}))
    return model
