"""The official downstream loss: Dice + cross-entropy (MONAI ``DiceCELoss``) with deep supervision."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from .distributed import GlobalBatchDiceCELoss

__all__ = ["deep_supervision_weights", "DeepSupervisionLoss"]


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net v1's weights: ``1/2**i`` for output ``i`` (finest first), the lowest scale set to 0, normalised.

    >>> deep_supervision_weights(5)
    [0.5333333333333333, 0.26666666666666666, 0.13333333333333333, 0.06666666666666667, 0.0]
    """
    if num_outputs < 1:
        raise ValueError(f"need at least one output, got {num_outputs}")
    w = [1.0 / 2**i for i in range(num_outputs)]
    if num_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


class DeepSupervisionLoss(nn.Module):
    """Dice (foreground classes, nnU-Net soft Dice with smooth 1e-5) + cross-entropy, summed over scales.

    Args:
        dice_weight, ce_weight: weights of the two terms (official: 1 and 1).
        batch_dice: Dice over the whole batch instead of per sample (nnU-Net ``batch_dice``).
        global_batch: in a data-parallel run, form the batch Dice over the global batch (statistics summed
            over ranks, :class:`~uniseg_hub.training.distributed.GlobalBatchDiceCELoss`); every rank must then
            call the loss equally often. No effect without ``batch_dice`` or a process group.

    Shapes:
        ``outputs``: logits ``(B, K, D, H, W)`` or a deep-supervision list, finest first (coarser scales are
        not upsampled); ``target``: ``(B, D, H, W)`` integer labels in ``0..K-1``. The target is downsampled to
        every scale with nearest-neighbour interpolation.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = True,
                 global_batch: bool = False) -> None:
        super().__init__()
        if global_batch and batch_dice:
            self.loss = GlobalBatchDiceCELoss(lambda_dice=dice_weight, lambda_ce=ce_weight)
            return
        self.loss = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=batch_dice,
            smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=dice_weight, lambda_ce=ce_weight,
        )

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        if target.ndim != 4:
            raise ValueError(f"target must be (B, D, H, W) integer labels, got shape {tuple(target.shape)}")
        k = outputs[0].shape[1]
        if int(target.max()) >= k or int(target.min()) < 0:
            raise ValueError(f"labels must lie in 0..{k - 1} for {k} output classes, found {int(target.min())}..{int(target.max())}")
        weights = deep_supervision_weights(len(outputs))
        t = target[:, None].float()
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            if w == 0:
                continue
            ts = t if tuple(out.shape[2:]) == tuple(t.shape[2:]) else F.interpolate(t, size=out.shape[2:], mode="nearest")
            total = total + w * self.loss(out.float(), ts)
        return total
