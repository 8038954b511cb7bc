"""The universal prompt (UniSeg, Sec. 2.2): a learnable prompt with one map per task, fused with the
bottleneck features into task-specific prompts; each sample is then conditioned on **its own** task.

State-dict layout: ``prompt`` (1, T, *prompt_size) and ``fusion.{i}`` (:class:`~uniseg_hub.models.layers.ConvNormAct`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import UniSegConfig
from .layers import ConvNormAct, init_he_

__all__ = ["UniversalPrompt", "as_task_tensor"]


def as_task_tensor(task_id: int | Sequence[int] | torch.Tensor, batch: int, num_tasks: int, device: torch.device) -> torch.Tensor:
    """Turn a task id (int, sequence or tensor) into a ``(B,)`` long tensor, checking range and length.

    A single id (int, or length 1) applies to every sample of the batch. Python ids are range-checked on the host;
    a tensor's range check reads it (a sync on CUDA), except while ``torch.compile`` traces, where an
    out-of-range id fails in the indexing instead (compiled kernels bound-check indices).
    """
    given_tensor = isinstance(task_id, torch.Tensor)
    t = task_id if given_tensor else torch.as_tensor(task_id)  # Python ids stay on the host for the check
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"task_id must hold integers, got dtype {t.dtype}")
    t = t.reshape(-1).long()
    if t.numel() == 1:
        t = t.expand(batch)
    elif t.numel() != batch:
        raise ValueError(f"task_id has {t.numel()} entries for a batch of {batch}; give one id, or one per sample")
    if t.numel() and not (given_tensor and torch.compiler.is_compiling()):
        if bool(((t < 0) | (t >= num_tasks)).any()):
            raise ValueError(
                f"task id {t.tolist()} out of range: this model has {num_tasks} tasks (ids 0..{num_tasks - 1})"
            )
    return t.to(device)


class UniversalPrompt(nn.Module):
    """Universal prompt + fusion, with per-sample task selection.

    ``task_prompts(f)`` fuses the bottleneck features ``f`` (B, C, *prompt_size) with the learnable prompt into
    one map per task (B, T, *prompt_size); ``forward(f, task_id)`` returns ``f`` with each sample's own task map
    appended (B, C + 1, *prompt_size), which the decoder consumes.

    The official code selects ``task_id[0]`` for the whole batch; here every sample gets its own task, which
    equals the official output whenever a batch shares one task.

    Args:
        config: uses ``num_tasks``, ``stage_channels[-1]``, ``prompt_size``, ``fusion_channels``,
            ``fusion_blocks``, ``conv_kernel_sizes[-1]``, ``norm`` and ``act``.
    """

    def __init__(self, config: UniSegConfig) -> None:
        super().__init__()
        if config.num_tasks < 1:
            raise ValueError("UniversalPrompt needs config.num_tasks >= 1; use UniSegBackbone for a prompt-free network")
        self.config = config
        t, c, hidden = config.num_tasks, config.stage_channels[-1], config.fusion_channels
        kernel = config.conv_kernel_sizes[-1]
        widths = [c + t] + [hidden] * (config.fusion_blocks - 1) + [t]
        self.prompt = nn.Parameter(torch.randn(1, t, *config.prompt_size))
        self.fusion = nn.Sequential(
            *[
                ConvNormAct(i, o, kernel_size=kernel, norm=config.norm, act=config.act)
                for i, o in zip(widths[:-1], widths[1:])
            ]
        )
        self.fusion.apply(init_he_)

    @property
    def num_tasks(self) -> int:
        return self.prompt.shape[1]

    def check_bottleneck(self, features: torch.Tensor) -> None:
        """Raise a clear error unless ``features`` has the prompt's spatial size (the training patch's bottleneck)."""
        want = tuple(self.prompt.shape[2:])
        if tuple(features.shape[2:]) != want:
            patch = tuple(p * d for p, d in zip(want, self.config.divisor))
            got = tuple(s * d for s, d in zip(features.shape[2:], self.config.divisor))
            raise ValueError(
                f"the universal prompt is sized to the training patch: UniSeg needs inputs of exactly "
                f"{patch} (bottleneck {want}), got an input of about {got} (bottleneck {tuple(features.shape[2:])}). "
                f"Segment larger volumes with uniseg_hub.inference (sliding window, roi_size={list(patch)})."
            )

    def task_prompts(self, features: torch.Tensor) -> torch.Tensor:
        """All task-specific prompts ``(B, T, *prompt_size)`` for bottleneck ``features`` ``(B, C, *prompt_size)``."""
        self.check_bottleneck(features)
        return self._fuse(features)

    def _fuse(self, features: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt.expand(features.shape[0], -1, -1, -1, -1)
        return self.fusion(torch.cat([features, prompt], dim=1))

    @staticmethod
    def select(task_prompts: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        """Each sample's own task map: ``(B, T, ...)``, ``(B,)`` → ``(B, 1, ...)`` (a gather: traceable and
        exportable with a dynamic batch)."""
        index = task_id.reshape(-1, 1, *([1] * (task_prompts.ndim - 2))).expand(-1, 1, *task_prompts.shape[2:])
        return torch.gather(task_prompts, 1, index)

    def forward(self, features: torch.Tensor, task_id: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Bottleneck features with the sample's task prompt appended: ``(B, C + 1, *prompt_size)``."""
        task = as_task_tensor(task_id, features.shape[0], self.num_tasks, features.device)
        self.check_bottleneck(features)
        return self.forward_unchecked(features, task)

    def forward_unchecked(self, features: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on a checked ``(B,)`` long task tensor, without Python-side checks (traceable)."""
        return torch.cat([features, self.select(self._fuse(features), task)], dim=1)
