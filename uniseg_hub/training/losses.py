"""The official loss: nnU-Net v1's ``MultipleOutputLoss2(DC_and_CE_loss)``, exactly, in nnU-Net's convention.

* :class:`DiceCELoss` — cross-entropy (mean over voxels) + soft Dice: softmax over channels; ``tp``, ``fp``,
  ``fn`` summed over the spatial axes and, with ``batch_dice``, the batch;
  ``dc = (2tp + smooth) / (2tp + fp + fn + smooth + 1e-8)``; background dropped; the Dice term is
  ``-mean(dc)`` over the foreground classes, absent classes included. So the loss is ``CE - Dice`` and can be
  negative (MONAI's ``DiceCELoss`` reports ``CE + 1 - Dice``: the same gradients, logs shifted by the Dice
  weight; ``tests/test_train_step.py`` checks both against the official values). Under ``torchrun`` the Dice
  statistics are summed over all ranks (:func:`~uniseg_hub.training.distributed.sum_across_ranks`), so the
  batch Dice is the global batch's, as in one process.
* :class:`DeepSupervisionLoss` — ``sum_s w_s * L(output_s, target_s)`` with nnU-Net's weights
  (:func:`deep_supervision_weights`); a zero-weight output is **skipped** (its head gets no gradient, hence no
  weight decay), and the coarse targets are the nnU-Net downsampling of the full-resolution labels
  (:func:`downsample_labels`). For prompt models trained on several tasks at once, ``task_classes`` restricts
  each sample's loss to its own task's output channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import sum_across_ranks

__all__ = ["deep_supervision_weights", "downsample_labels", "DiceCELoss", "DeepSupervisionLoss"]


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


def _nearest_indices(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of every output sample of an order-0 resize (scipy/skimage ``grid_mode``): the voxel whose
    centre is nearest to ``(i + 0.5) * n_in / n_out - 0.5``, i.e. ``floor((i + 0.5) * n_in / n_out)``."""
    idx = torch.floor((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out)).long()
    return idx.clamp_(0, n_in - 1)


def downsample_labels(labels: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The deep-supervision targets: ``labels`` ``(B, D, H, W)`` resized to each of ``shapes`` with nearest neighbour
    the way nnU-Net's ``DownsampleSegForDSTransform2`` does (skimage ``resize(order=0)``): for an integer stride
    ``s`` the voxels ``s//2 + i*s`` (the centre voxel of each block; ``F.interpolate(mode="nearest")`` would take
    ``i*s``, the corner)."""
    out = []
    for shape in shapes:
        t = labels
        for axis, n_out in enumerate(shape):
            n_in = t.shape[axis + 1]
            if n_in != n_out:
                t = t.index_select(axis + 1, _nearest_indices(n_in, int(n_out), t.device))
        out.append(t)
    return out


class DiceCELoss(nn.Module):
    """nnU-Net v1's ``DC_and_CE_loss`` (``SoftDiceLoss(do_bg=False, smooth)`` + ``RobustCrossEntropyLoss``).

    Args:
        dice_weight, ce_weight: weights of the two terms (official: 1 and 1).
        batch_dice: form ``tp``, ``fp``, ``fn`` over the whole batch (official downstream: ``True``).
        smooth: nnU-Net's ``smooth`` (1e-5).
        global_batch: in a data-parallel run, sum the Dice statistics over all ranks (every rank must then call
            the loss equally often); no effect without a process group.

    Shapes:
        ``logits`` ``(B, K, D, H, W)`` with ``K >= 2``; ``target`` ``(B, D, H, W)`` integer labels in ``0..K-1``.
        Returns a scalar (float32 for half-precision logits, else the logits' dtype).
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = True, smooth: float = 1e-5,
                 global_batch: bool = False) -> None:
        super().__init__()
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.batch_dice, self.smooth, self.global_batch = bool(batch_dice), float(smooth), bool(global_batch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        if k < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"expected logits (B, K>=2, *S) and target (B, *S), got {tuple(logits.shape)} and {tuple(target.shape)}")
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast outputs: the loss in float32
            logits = logits.float()
        target = target.long()
        total = logits.new_zeros(())
        if self.ce_weight:
            total = total + self.ce_weight * F.cross_entropy(logits, target)
        if self.dice_weight:
            probs = torch.softmax(logits, 1)
            onehot = F.one_hot(target, k).movedim(-1, 1).to(probs.dtype)
            dims = [0, *range(2, logits.ndim)] if self.batch_dice else list(range(2, logits.ndim))
            tp = (probs * onehot).sum(dims)
            fp = (probs * (1 - onehot)).sum(dims)
            fn = ((1 - probs) * onehot).sum(dims)
            if self.batch_dice and self.global_batch:
                tp, fp, fn = sum_across_ranks(torch.stack([tp, fp, fn])).unbind(0)
            dc = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth + 1e-8)
            dc = dc[1:] if self.batch_dice else dc[:, 1:]
            total = total - self.dice_weight * dc.mean()
        return total


class DeepSupervisionLoss(nn.Module):
    """nnU-Net v1's ``MultipleOutputLoss2`` over :class:`DiceCELoss` (same arguments).

    Shapes:
        ``outputs``: logits ``(B, K, D, H, W)`` or a deep-supervision list, finest first; ``target``: the
        full-resolution labels ``(B, D, H, W)`` (downsampled here with :func:`downsample_labels`), or one label
        map per output (already downsampled, e.g. the official fixtures' targets). Labels must lie in ``0..K-1``.
        ``task_classes``: per sample, how many output channels its task uses (prompt models trained on several
        tasks at once); samples are grouped by it and each group's loss, on its first ``k`` channels, is
        weighted by the group's share of the batch.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = True, smooth: float = 1e-5,
                 global_batch: bool = False) -> None:
        super().__init__()
        self.loss = DiceCELoss(dice_weight, ce_weight, batch_dice, smooth, global_batch)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor],
                task_classes: Sequence[int] | None = None) -> torch.Tensor:
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        if isinstance(target, torch.Tensor):
            if target.ndim != 4:
                raise ValueError(f"target must be (B, D, H, W) integer labels, got shape {tuple(target.shape)}")
            targets = downsample_labels(target, [o.shape[2:] for o in outputs])
        else:
            targets = [t[:, 0] if t.ndim == 5 else t for t in target]
            if len(targets) != len(outputs):
                raise ValueError(f"{len(outputs)} outputs but {len(targets)} target maps")
        full = targets[0]
        k = outputs[0].shape[1]
        lo, hi = int(full.min()), int(full.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"labels must lie in 0..{k - 1} for {k} output classes, found {lo}..{hi}")
        groups: list[tuple[torch.Tensor | None, int]] = [(None, k)]
        if task_classes is not None:
            tc = [int(c) for c in task_classes]
            if len(tc) != full.shape[0]:
                raise ValueError(f"task_classes needs one entry per sample ({full.shape[0]}), got {len(tc)}")
            if len(set(tc)) > 1 or tc[0] != k:
                groups = [(torch.tensor([i for i, c in enumerate(tc) if c == n], device=full.device), n) for n in sorted(set(tc))]
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for idx, n in groups:
            share = 1.0 if idx is None else len(idx) / full.shape[0]
            for w, out, tgt in zip(weights, outputs, targets):
                if w == 0:  # skipped, not multiplied by 0: the head of this output gets no gradient
                    continue
                if idx is not None:
                    out, tgt = out.index_select(0, idx)[:, :n], tgt.index_select(0, idx)
                    if int(tgt.max()) >= n:
                        raise ValueError(f"labels up to {int(tgt.max())} in samples of a task with {n} classes")
                total = total + (w * share) * self.loss(out, tgt)
        return total
