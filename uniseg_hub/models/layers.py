"""Building blocks: conv → norm → act blocks, the multi-stem first block, and He initialisation.

Norm and activation layers come from MONAI's factories, so a config names them with MONAI's JSON-friendly
vocabulary (``("instance", {"affine": True})``). The block order conv → norm → act is nnU-Net's
``ConvDropoutNormNonlin`` with dropout 0 (the official UniSeg setting).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.utils.checkpoint
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = [
    "ConvNormAct",
    "GradCheckpointing",
    "MultiStemConvNormAct",
    "make_norm",
    "make_act",
    "init_he_",
    "upsample_concat",
]


def make_norm(spec: Sequence, channels: int) -> nn.Module:
    """A 3D norm layer from a MONAI-style ``[name, kwargs]`` spec."""
    return get_norm_layer(name=(spec[0], dict(spec[1])), spatial_dims=3, channels=channels)


def make_act(spec: Sequence) -> nn.Module:
    """An activation layer from a MONAI-style ``[name, kwargs]`` spec."""
    return get_act_layer(name=(spec[0], dict(spec[1])))


def _same_padding(kernel: Sequence[int]) -> list[int]:
    return [(k - 1) // 2 for k in kernel]


class ConvNormAct(nn.Sequential):
    """``Conv3d`` → norm → activation. Submodule names ``conv``, ``norm``, ``act`` are state-dict keys.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: ``(kD, kH, kW)``, odd; padded to keep the size (before stride).
        stride: ``(sD, sH, sW)``.
        norm: ``[name, kwargs]`` norm spec.
        act: ``[name, kwargs]`` activation spec.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: Sequence[int] = (3, 3, 3),
        stride: Sequence[int] = (1, 1, 1),
        norm: Sequence = ("instance", {"affine": True}),
        act: Sequence = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, tuple(kernel_size), tuple(stride), padding=_same_padding(kernel_size), bias=True
        )
        self.norm = make_norm(norm, out_channels)
        self.act = make_act(act)


class MultiStemConvNormAct(nn.Module):
    """The first block of UniSeg: one conv per supported input-channel count, one shared norm and activation.

    A 1-channel CT, a 2-channel CT+PET and a 4-channel multi-sequence MR each go through their own stem conv
    (``convs["1"]``, ``convs["2"]``, ``convs["4"]``) into the same feature space.

    Args:
        in_channels: supported channel counts, e.g. ``[1, 2, 4]``.
        out_channels, kernel_size, norm, act: as :class:`ConvNormAct`.

    Shapes:
        ``(B, C, D, H, W)`` with ``C`` in ``in_channels`` → ``(B, out_channels, D, H, W)``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        *,
        kernel_size: Sequence[int] = (3, 3, 3),
        norm: Sequence = ("instance", {"affine": True}),
        act: Sequence = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    ) -> None:
        super().__init__()
        self.in_channels = sorted(int(c) for c in in_channels)
        self.convs = nn.ModuleDict(
            {
                str(c): nn.Conv3d(c, out_channels, tuple(kernel_size), 1, padding=_same_padding(kernel_size), bias=True)
                for c in self.in_channels
            }
        )
        self.norm = make_norm(norm, out_channels)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.shape[1])  # a Python int even while tracing: the stem is chosen when the graph is recorded
        if str(c) not in self.convs:
            raise ValueError(
                f"UniSeg has input stems for {self.in_channels} channels (1: CT or MR, 2: CT+PET, 4: four MR "
                f"sequences), but the input has {c} channels (shape {tuple(x.shape)}). Use "
                "uniseg_hub.models.adapters to add a stem for a new channel count."
            )
        return self.act(self.norm(self.convs[str(c)](x)))


class GradCheckpointing:
    """Activation-checkpointing settings shared by :class:`~uniseg_hub.models.encoder.UniSegEncoder` and
    :class:`~uniseg_hub.models.decoder.UniSegDecoder` (a mixin; ``grad_checkpointing`` stays the timm-style bool).

    Each stage is one recomputed segment (only stage inputs are stored). ``levels`` checkpoints only the
    ``levels`` finest resolution levels (level 0 = full resolution): each coarser level holds about 1/4 of the
    activation memory but 1/2 of the compute of the one above, so leaving coarse levels out trades a little
    memory for less recompute. ``None``: every level. (Per-block segments were measured too and kept *more*
    memory on this network, see ``benchmarks/README.md``.)
    """

    grad_checkpointing: bool = False
    grad_checkpointing_levels: int | None = None

    def set_grad_checkpointing(self, enable: bool = True, *, levels: int | None = None) -> None:
        """Recompute activations in the backward pass to save memory (training only; same outputs and grads)."""
        if levels is not None and levels < 1:
            raise ValueError(f"levels must be None (all) or >= 1, got {levels}")
        self.grad_checkpointing, self.grad_checkpointing_levels = bool(enable), levels

    def _checkpoint_level(self, level: int) -> bool:
        """Whether the stage at resolution ``level`` is checkpointed in the current call."""
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return False
        return self.grad_checkpointing_levels is None or level < self.grad_checkpointing_levels

    @staticmethod
    def _checkpoint(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


def upsample_concat(upsample: nn.ConvTranspose3d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``torch.cat([upsample(x), skip], dim=1)`` in one pass, for a transposed conv with ``kernel == stride``.

    Such a transposed conv places a ``kernel``-sized block per input voxel without overlap, i.e. it is one matrix
    product followed by a pixel shuffle; the shuffle writes straight into the concatenation buffer. The result
    equals the two-step version exactly (same products and sums) and is about 3x faster on CPU. Autograd works.

    Shapes:
        ``x`` ``(B, C_in, d, h, w)``, ``skip`` ``(B, C_skip, d*kD, h*kH, w*kW)`` →
        ``(B, C_out + C_skip, d*kD, h*kH, w*kW)``.
    """
    if tuple(upsample.kernel_size) != tuple(upsample.stride) or any(upsample.padding) or any(upsample.output_padding) or upsample.groups != 1:
        return torch.cat([upsample(x), skip], dim=1)
    b, c_in, d, h, w = x.shape
    kd, kh, kw = upsample.kernel_size
    c_out = upsample.out_channels
    weight = upsample.weight
    out = x.new_empty(b, c_out + skip.shape[1], d * kd, h * kh, w * kw)
    # (C_out * kD * kH * kW, C_in) @ (B, C_in, d*h*w) -> (B, C_out * k, d*h*w); bmm over an expanded weight
    # writes this layout directly (matmul folds the batch into the rows and transposes the result: 3-4x slower)
    y = torch.bmm(weight.reshape(c_in, -1).t().to(x.dtype).expand(b, -1, -1), x.reshape(b, c_in, -1))
    up = out[:, :c_out].view(b, c_out, d, kd, h, kh, w, kw).permute(0, 1, 3, 5, 7, 2, 4, 6)
    up.copy_(y.view(b, c_out, kd, kh, kw, d, h, w))
    if upsample.bias is not None:
        out[:, :c_out] += upsample.bias.to(x.dtype).view(1, -1, 1, 1, 1)
    out[:, c_out:].copy_(skip)
    return out


@torch.no_grad()
def init_he_(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's ``InitWeights_He``: Kaiming-normal conv weights (``a=neg_slope``), zero biases. Use with ``apply``."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=neg_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
