"""UniSeg decoder: transposed-conv upsampling, skip concatenation, conv stages, and segmentation heads.

State-dict layout (public API): ``stages.{u}.upsample`` (``ConvTranspose3d``, no bias), ``stages.{u}.blocks.{b}``
(:class:`~uniseg_hub.models.layers.ConvNormAct`), ``heads.{u}`` (1x1x1 ``Conv3d``, no bias). Stage ``u = 0`` is the
coarsest. Every head is always built, so checkpoints load with deep supervision on or off.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import UniSegConfig
from .layers import ConvNormAct, GradCheckpointing, init_he_, upsample_concat

__all__ = ["UniSegDecoder", "DecoderStage", "SegmentationHeads"]


class DecoderStage(nn.Module):
    """Upsample ``x`` to the skip's resolution, concatenate the skip, run the conv blocks.

    ``fused_upsample = True`` (set by :func:`uniseg_hub.models.perf.optimize_for_inference`) computes the transposed
    conv and the concatenation in one pass (:func:`~uniseg_hub.models.layers.upsample_concat`); outputs are identical.
    """

    fused_upsample: bool = False

    def __init__(self, in_channels: int, skip_channels: int, scale: Sequence[int], kernel: Sequence[int], num_blocks: int, config: UniSegConfig) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose3d(in_channels, skip_channels, tuple(scale), tuple(scale), bias=False)
        common = dict(kernel_size=kernel, norm=config.norm, act=config.act)
        self.blocks = nn.Sequential(
            ConvNormAct(2 * skip_channels, skip_channels, **common),
            *[ConvNormAct(skip_channels, skip_channels, **common) for _ in range(num_blocks - 1)],
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.fused_upsample and not torch.is_autocast_enabled(x.device.type):
            return self.blocks(upsample_concat(self.upsample, x, skip))
        return self.blocks(torch.cat([self.upsample(x), skip], dim=1))


class SegmentationHeads(nn.ModuleList):
    """One 1x1x1 conv head (no bias) per decoder scale, coarsest first, as the official ``seg_outputs``."""

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__([nn.Conv3d(c, num_classes, 1, 1, 0, bias=False) for c in channels])
        self.apply(init_he_)

    @property
    def num_classes(self) -> int:
        return self[0].out_channels


class UniSegDecoder(GradCheckpointing, nn.Module):
    """The UniSeg decoder with deep-supervision heads.

    Args:
        config: uses ``stage_channels``, ``pool_op_kernel_sizes``, ``conv_kernel_sizes``, ``conv_per_stage``,
            ``num_classes``, ``deep_supervision``, ``norm`` and ``act``.
        extra_bottleneck_channels: channels appended to the bottleneck before decoding (1 for the task prompt
            of :class:`~uniseg_hub.models.prompt.UniversalPrompt`, 0 for the prompt-free backbone).

    Shapes:
        ``forward(skips, bottleneck)`` with ``skips`` the encoder outputs except the bottleneck (finest first)
        returns logits ``(B, num_classes, D, H, W)`` at the finest scale, or with ``deep_supervision`` the list
        ``[finest, 1/stride_4, ..., coarsest]`` (not upsampled, like the official network).
    """

    def __init__(self, config: UniSegConfig, extra_bottleneck_channels: int = 0) -> None:
        super().__init__()
        self.config = config
        self.deep_supervision = config.deep_supervision
        ch = config.stage_channels
        n = len(config.pool_op_kernel_sizes)
        stages = []
        down = ch[-1] + extra_bottleneck_channels
        for u in range(n):
            skip = ch[-(2 + u)]
            stages.append(
                DecoderStage(down, skip, config.pool_op_kernel_sizes[-(u + 1)], config.conv_kernel_sizes[-(u + 1)], config.conv_per_stage, config)
            )
            down = skip
        self.stages = nn.ModuleList(stages)
        self.heads = SegmentationHeads([ch[-(2 + u)] for u in range(n)], config.num_classes)
        self.stages.apply(init_he_)

    @property
    def num_classes(self) -> int:
        return self.heads.num_classes

    def forward_features(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder stage's output, coarsest first."""
        if len(skips) != len(self.stages):
            raise ValueError(f"the decoder needs {len(self.stages)} skip tensors, got {len(skips)}")
        x, out = bottleneck, []
        for u, (stage, skip) in enumerate(zip(self.stages, reversed(skips))):
            level = len(self.stages) - 1 - u  # the last stage is full resolution
            x = self._checkpoint(stage, x, skip) if self._checkpoint_level(level) else stage(x, skip)
            out.append(x)
        return out

    def forward(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        feats = self.forward_features(skips, bottleneck)
        if not self.deep_supervision:
            return self.heads[-1](feats[-1])
        return [head(f) for head, f in zip(reversed(self.heads), reversed(feats))]
