"""What the MONAI and nnU-Net v2 bridges share: which networks can leave, with which stem, and how a conv bias
survives a network that has none.

* :func:`check_backbone` — only a prompt-free :class:`~uniseg_hub.models.uniseg.UniSegBackbone` maps onto a plain U-Net;
  a prompt-driven :class:`~uniseg_hub.models.uniseg.UniSeg` gets one message saying why not and what to do instead.
* :func:`resolve_in_channels` — the backbone's first block has one stem conv per channel count
  (``config.input_channels``); a plain U-Net has one input conv, so one stem is chosen.
* :func:`absorb_conv_bias` — a per-channel constant added before a norm that subtracts the per-channel mean of
  its own input cancels exactly: ``(x + b) - mean(x + b) = x - mean(x)`` and the variance is unchanged. Before a
  norm with running statistics the constant moves into ``running_mean`` (``x + b - m = x - (m - b)``), exact in
  both modes. Any other norm (group, layer) mixes channels, so a nonzero bias cannot be dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..config import TaskSpec, UniSegConfig
from ..models.uniseg import UniSeg, UniSegBackbone

__all__ = [
    "InteropDependencyError",
    "BackboneLayout",
    "check_backbone",
    "resolve_in_channels",
    "absorb_conv_bias",
    "sub_state",
    "require",
]


class InteropDependencyError(ImportError):
    """An optional interop dependency (nnunetv2 / dynamic-network-architectures) is not installed."""


def require(module: str, what: str) -> None:
    """Import ``module`` or raise one clear :class:`InteropDependencyError` naming the extra that installs it."""
    try:
        __import__(module)
    except ImportError as e:
        raise InteropDependencyError(
            f"{what} needs {module.split('.')[0]} (nnU-Net v2 and dynamic-network-architectures): "
            "pip install 'uniseg_hub[interop]'"
        ) from e


def check_backbone(model: nn.Module, target: str) -> UniSegBackbone:
    """``model`` if it is a :class:`UniSegBackbone`, else one clear error (``target`` names the destination, with
    its article: ``"a DynUNet"``)."""
    if isinstance(model, UniSeg):
        raise ValueError(
            f"a prompt-driven UniSeg cannot become {target}: its decoder reads one more bottleneck channel, the "
            "task prompt fused with each input's own bottleneck features, and a plain U-Net has no such input. "
            "Transfer it first with uniseg_hub.models.adapters.from_upstream(model, num_classes=K, strategy='official') "
            "(a prompt-free UniSegBackbone, the paper's downstream network), fine-tune it, and export that"
        )
    if not isinstance(model, UniSegBackbone):
        raise TypeError(f"{target[0].upper() + target[1:]} needs a UniSegBackbone, got {type(model).__name__}")
    return model


def resolve_in_channels(config: UniSegConfig, in_channels: int | None, target: str) -> int:
    """The stem to export: ``in_channels``, else the backbone's task's modality count, else its only stem."""
    spec: TaskSpec | None = config.task_spec()
    if in_channels is None:
        if spec is not None:
            in_channels = len(spec.modalities)
        elif len(config.input_channels) == 1:
            in_channels = config.input_channels[0]
        else:
            raise ValueError(
                f"the network has input stems for {config.input_channels} channels and its config names no task, "
                f"but {target} has one input conv: choose a stem with in_channels= (--channels)"
            )
    in_channels = int(in_channels)
    if in_channels not in config.input_channels:
        raise ValueError(
            f"the network has input stems for {config.input_channels} channels, got in_channels={in_channels}; "
            "uniseg_hub.models.adapters.from_upstream(..., in_channels=N) adapts a stem for a new channel count"
        )
    if spec is not None and len(spec.modalities) != in_channels:
        raise ValueError(
            f"task {spec.name!r} takes {len(spec.modalities)} channel(s) ({', '.join(spec.modalities)}), "
            f"got in_channels={in_channels}"
        )
    return in_channels


def absorb_conv_bias(bias: torch.Tensor, norm: nn.Module, norm_state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """``norm_state`` for a copy of ``norm`` that follows the same conv **without** its ``bias`` (exactly).

    Args:
        bias: the dropped conv bias ``(C,)``.
        norm: the norm module after the conv (its type decides).
        norm_state: its state dict (``weight``, ``bias``, running statistics).
        where: the conv's name, for the error.

    Returns:
        the state to load into the target norm (``running_mean`` shifted by ``-bias`` for norms with running
        statistics; unchanged for instance norms, whose per-sample mean removes the bias).
    """
    state = dict(norm_state)
    running = state.get("running_mean")
    if running is not None:
        state["running_mean"] = running - bias.to(running.dtype)
        return state
    if isinstance(norm, nn.modules.instancenorm._InstanceNorm):
        return state
    if bool((bias != 0).any()):
        raise ValueError(
            f"{where}: a conv bias before {type(norm).__name__} (which normalises over groups of channels) does not "
            "cancel, and the target convs have no bias; only instance and batch norms can be exported this way"
        )
    return state


@dataclass(frozen=True)
class BackboneLayout:
    """Where every layer of a :class:`UniSegBackbone` lives in its state dict, for one stem.

    Attributes:
        encoder: ``[stage][block] -> (conv prefix, norm prefix)``, stage 0 first, bottleneck last.
        upsample: per decoder stage (coarsest first), the transposed conv's weight key.
        decoder: ``[decoder stage][block] -> (conv prefix, norm prefix)``, coarsest first.
        heads: per decoder stage (coarsest first), the 1x1x1 head's weight key.
    """

    encoder: list[list[tuple[str, str]]]
    upsample: list[str]
    decoder: list[list[tuple[str, str]]]
    heads: list[str]

    @classmethod
    def of(cls, config: UniSegConfig, in_channels: int) -> "BackboneLayout":
        n, per = config.num_stages, config.conv_per_stage
        encoder = []
        for s in range(n):
            blocks = [(f"encoder.stages.{s}.{b}.conv", f"encoder.stages.{s}.{b}.norm") for b in range(per)]
            if s == 0:
                blocks[0] = (f"encoder.stages.0.0.convs.{in_channels}", "encoder.stages.0.0.norm")
            encoder.append(blocks)
        decoder = [[(f"decoder.stages.{u}.blocks.{b}.conv", f"decoder.stages.{u}.blocks.{b}.norm") for b in range(per)]
                   for u in range(n - 1)]
        return cls(encoder=encoder, upsample=[f"decoder.stages.{u}.upsample.weight" for u in range(n - 1)],
                   decoder=decoder, heads=[f"decoder.heads.{u}.weight" for u in range(n - 1)])


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix.``, with the prefix removed (a module's own state dict)."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
