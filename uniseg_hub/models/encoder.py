"""UniSeg encoder: the multi-stem first stage, strided-conv stages and the bottleneck.

State-dict layout (public API): ``stages.{s}.{b}`` is block ``b`` of stage ``s``; stage 0's first block is a
:class:`~uniseg_hub.models.layers.MultiStemConvNormAct` (``stages.0.0.convs.{1,2,4}``), every other block a
:class:`~uniseg_hub.models.layers.ConvNormAct` (``conv``, ``norm``). The last stage is the bottleneck.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import UniSegConfig
from ..weights.report import LoadReport
from .layers import ConvNormAct, GradCheckpointing, MultiStemConvNormAct, init_he_

__all__ = ["UniSegEncoder", "check_volume"]


def check_volume(x: torch.Tensor, module: nn.Module, what: str = "input") -> None:
    """Raise a clear error unless ``x`` is a finite floating ``(B, C, D, H, W)`` tensor matching ``module``'s dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (B, C, D, H, W), got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(
            f"{what} must be 5-D (B, C, D, H, W), got {x.ndim}-D shape {tuple(x.shape)}"
            + (" — add a batch dimension with x[None]" if x.ndim == 4 else "")
        )
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}; convert it with x.float()")
    if not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{what} holds {bad} non-finite value(s) (NaN or inf) of {x.numel()}; the network would return "
            "non-finite logits — fix or mask them before the forward"
        )
    param = next(module.parameters(), None)
    if param is not None and x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{what} dtype {x.dtype} does not match the model's parameters ({param.dtype}); "
            f"use x.to({param.dtype}) or model.to({x.dtype}), or run under torch.autocast"
        )


class UniSegEncoder(GradCheckpointing, nn.Module):
    """The UniSeg encoder. ``forward`` returns every stage's output (the skips, bottleneck last).

    Args:
        config: the network configuration; uses ``input_channels``, ``stage_channels``, ``conv_kernel_sizes``,
            ``pool_op_kernel_sizes``, ``conv_per_stage``, ``norm`` and ``act``.

    Shapes:
        input ``(B, C, D, H, W)`` with ``C`` in ``config.input_channels`` and ``(D, H, W)`` multiples of
        ``config.divisor``; output ``[(B, stage_channels[s], *(size / reductions[s])) for s in stages]``.

    Example:
        >>> enc = UniSegEncoder(UniSegConfig.uniseg_11task(base_num_features=4))
        >>> [f.shape[1] for f in enc(torch.zeros(1, 1, 16, 32, 32))]
        [4, 8, 16, 32, 64, 128]
    """

    #: Set by :func:`uniseg_hub.hub.uniseg_encoder` when the encoder is loaded from weights (else ``None``).
    load_report: "LoadReport | None" = None

    def __init__(self, config: UniSegConfig) -> None:
        super().__init__()
        self.config = config
        common = dict(norm=config.norm, act=config.act)
        stages = []
        in_ch = None
        for s, (out_ch, kernel, stride) in enumerate(zip(config.stage_channels, config.conv_kernel_sizes, config.stage_strides)):
            if s == 0:
                first: nn.Module = MultiStemConvNormAct(config.input_channels, out_ch, kernel_size=kernel, **common)
            else:
                first = ConvNormAct(in_ch, out_ch, kernel_size=kernel, stride=stride, **common)
            rest = [ConvNormAct(out_ch, out_ch, kernel_size=kernel, **common) for _ in range(config.conv_per_stage - 1)]
            stages.append(nn.Sequential(first, *rest))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        #: timm-style description of each returned feature map.
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=f"stages.{s}")
            for s, (c, r) in enumerate(zip(config.stage_channels, config.reductions))
        ]
        self.apply(init_he_)

    @property
    def in_channels(self) -> list[int]:
        return list(self.config.input_channels)

    def check_batch(self, x: torch.Tensor) -> None:
        """Raise a clear error for a batch the encoder cannot serve (type, rank, dtype, finite values, channel
        count, spatial size); :meth:`forward` calls it, :meth:`forward_unchecked` does not."""
        check_volume(x, self)
        if x.shape[1] not in self.config.input_channels:
            raise ValueError(
                f"UniSeg has input stems for {list(self.config.input_channels)} channels (1: CT or MR, 2: CT+PET, "
                f"4: four MR sequences), but the input has {x.shape[1]} channels (shape {tuple(x.shape)}). Use "
                "uniseg_hub.models.adapters to add a stem for a new channel count."
            )
        bad = [size % d for size, d in zip(x.shape[2:], self.config.divisor)]
        if any(bad):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} is not a multiple of the encoder's total stride "
                f"{tuple(self.config.divisor)}; pad the volume or use uniseg_hub.inference (sliding window)"
            )
        if self.config.norm[0] == "instance" and all(size == d for size, d in zip(x.shape[2:], self.config.divisor)):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} leaves a 1-voxel bottleneck, which instance norm cannot "
                f"normalise; use at least twice the total stride {tuple(self.config.divisor)} along one axis"
            )

    def _run_stage(self, level: int, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        return self._checkpoint(stage, x) if self._checkpoint_level(level) else stage(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All stage outputs, finest first, bottleneck last."""
        self.check_batch(x)
        return self.forward_unchecked(x)

    def forward_unchecked(self, x: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`forward` without :meth:`check_batch`: no Python-side checks, so it traces into one graph (what
        ``torch.compile`` and the exporters record)."""
        feats = []
        for level, stage in enumerate(self.stages):
            x = self._run_stage(level, stage, x)
            feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck features ``(B, stage_channels[-1], *size / divisor)``."""
        return self.forward(x)[-1]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        intermediates_only: bool = False,
        stop_early: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: selected stage outputs (and the final features).

        Args:
            indices: an int ``n`` takes the last ``n`` stages, a sequence takes those stage indices (negative
                allowed); ``None`` takes all.
            intermediates_only: return only the list of intermediates.
            stop_early: stop after the deepest requested stage (only with ``intermediates_only``).
        """
        n = len(self.stages)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = sorted(i % n for i in indices)
        if not take or min(take) < 0 or max(take) >= n:
            raise ValueError(f"indices {indices!r} select no valid stage of {n}")
        self.check_batch(x)
        last = max(take) if (stop_early and intermediates_only) else n - 1
        out = []
        for s in range(last + 1):
            x = self._run_stage(s, self.stages[s], x)
            if s in take:
                out.append(x)
        return out if intermediates_only else (x, out)
