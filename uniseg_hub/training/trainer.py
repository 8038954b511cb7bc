"""One training run's model, loss, optimizer and lr schedule: the official iteration, proven step for step.

:class:`Trainer` is what ``nnUNetTrainerV2.run_iteration`` + ``maybe_update_lr`` do in the official
``UniSeg_Trainer_DS``, as a small public object that :func:`uniseg_hub.training.finetune` drives (and that a
user can drive with their own data loop)::

    trainer = Trainer(model, TrainConfig())
    for epoch in range(config.epochs):
        trainer.set_epoch(epoch)                      # lr = 0.01 * (1 - epoch / 100) ** 0.9, once per epoch
        for _ in range(config.iterations_per_epoch):
            loss = trainer.step(images, labels)       # (B, C, D, H, W) float, (B, D, H, W) long

One :meth:`Trainer.step`: ``zero_grad`` → forward with deep supervision → :class:`DeepSupervisionLoss` against
targets downsampled the nnU-Net way → backward → gradient-norm clip (12) → SGD step (momentum 0.99, Nesterov,
weight decay 3e-5 on every parameter with a gradient, one parameter group). ``tests/test_train_step.py`` runs three
iterations from the official fixture's initial weights and compares losses and weights with the official trainer's.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..resources import resolve_device
from ..models.adapters import param_groups  # layer-wise decay over timm-style groups
from .config import TrainConfig
from .distributed import DistributedContext
from .losses import DeepSupervisionLoss

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One group of every trainable parameter (the official optimizer), or per-layer groups with layer decay."""
    if config.layer_decay is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (everything is frozen)")
        return [{"params": params, "lr": config.lr, "lr_scale": 1.0}]
    return param_groups(model, config.lr, config.layer_decay)


class Trainer:
    """The official training iteration for one model (see the module docstring).

    Args:
        model: a :class:`~uniseg_hub.models.uniseg.UniSegBackbone` or :class:`~uniseg_hub.models.uniseg.UniSeg`, trained in place
            (moved to the device, deep supervision switched to ``config.deep_supervision``; frozen parameters stay
            frozen and get no optimizer state).
        config: the recipe (:class:`TrainConfig`; its defaults are the official values).
        ctx: the data-parallel context under ``torchrun`` (default: a single process on ``config.device``); the
            model is wrapped in DDP and the batch Dice is formed over the global batch.

    Attributes:
        epoch: the epoch set by :meth:`set_epoch`; ``optimizer``, ``scaler``, ``loss_fn``; ``device``.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *, ctx: DistributedContext | None = None) -> None:
        self.config = config if config is not None else TrainConfig()
        self.ctx = ctx if ctx is not None else DistributedContext(device=resolve_device(self.config.device))
        self.device = self.ctx.device
        self.model = model.to(self.device)
        self.model.set_deep_supervision(self.config.deep_supervision)
        self.prompted = getattr(model.config, "num_tasks", 0) > 0
        self.net = self.ctx.wrap(self.model)  # DDP broadcasts rank 0's weights: every rank starts equal
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        c = self.config
        self.optimizer = torch.optim.SGD(_param_groups(self.model, c), lr=c.lr, momentum=c.momentum, dampening=0,
                                         weight_decay=c.weight_decay, nesterov=c.nesterov)
        self.use_amp = c.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.loss_fn = DeepSupervisionLoss(c.dice_weight, c.ce_weight, c.batch_dice, c.dice_smooth, global_batch=self.ctx.enabled)
        self.epoch = 0
        self.set_epoch(0)

    # -- schedule ------------------------------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The current lr (of the last group: the heads when layer decay is on)."""
        return float(self.optimizer.param_groups[-1]["lr"])

    def set_epoch(self, epoch: int) -> float:
        """Set the lr of ``epoch`` (0-based) — ``config.poly_lr(epoch)``, times each group's layer-decay scale —
        as nnU-Net's ``maybe_update_lr`` does once per epoch; returns it."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= epoch <= self.config.epochs:
            raise ValueError(f"epoch must be an integer in 0..{self.config.epochs}, got {epoch!r}")
        self.epoch = int(epoch)
        lr = self.config.poly_lr(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return self.lr

    # -- one iteration -------------------------------------------------------------------------------------------
    def _task_tensor(self, task_ids: Sequence[int | None] | torch.Tensor | None, batch: int) -> torch.Tensor:
        default = self.model.config.default_task
        if task_ids is None:
            if default is None:
                raise ValueError("this UniSeg model has no default task: pass task_ids (one task id per sample)")
            return torch.full((batch,), default, dtype=torch.long, device=self.device)
        ids = [default if t is None else int(t) for t in (task_ids.tolist() if isinstance(task_ids, torch.Tensor) else task_ids)]
        if None in ids:
            raise ValueError("a sample has no task id and the model has no default task")
        if len(ids) != batch:
            raise ValueError(f"{len(ids)} task ids for a batch of {batch}")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor, task_ids: Sequence[int | None] | torch.Tensor | None = None) -> float:
        """One official iteration on a batch; returns the loss (nnU-Net's convention: ``CE - Dice``).

        Args:
            images: ``(B, C, D, H, W)`` float (the augmented patches).
            labels: ``(B, D, H, W)`` integer class indices (full resolution; coarse targets are derived here).
            task_ids: prompt models: one task id per sample (``None`` entries: the model's default task); each
                sample's loss uses only its task's output channels.
        """
        if images.ndim != 5 or labels.ndim != 4 or labels.shape[0] != images.shape[0] or labels.shape[1:] != images.shape[2:]:
            raise ValueError(f"expected images (B, C, D, H, W) and labels (B, D, H, W) on the same grid, got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        x = images.to(self.device, dtype=torch.float32, non_blocking=True)
        y = labels.to(self.device, dtype=torch.long, non_blocking=True)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        task_classes = None
        with torch.autocast(self.device.type, enabled=self.use_amp):
            if self.prompted:
                tasks = self._task_tensor(task_ids, x.shape[0])
                task_classes = [self.model.config.task_num_classes(int(t)) for t in tasks.tolist()]
                outputs = self.net(x, tasks)
            else:
                outputs = self.net(x)
        loss = self.loss_fn(outputs, y, task_classes)
        if not torch.isfinite(loss):
            bad = "the input patches hold non-finite values" if not torch.isfinite(x).all() else "lower the lr"
            raise FloatingPointError(f"the loss became {float(loss)} at epoch {self.epoch + 1} ({bad})")
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    # -- resume ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and grad-scaler state and the epoch (what :meth:`load_state_dict` restores)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.set_epoch(int(state["epoch"]))
