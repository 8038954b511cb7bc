"""The fine-tuning loop (:func:`finetune`) and whole-volume validation (:func:`evaluate`).

One loop serves the prompt-free :class:`~uniseg_hub.model.UniSegBackbone` and the prompt-driven
:class:`~uniseg_hub.model.UniSeg` (each sample is fed its own task id, so several tasks can share a run).
The run is a pure function of ``config.seed``: all sampling and augmentation randomness comes from one numpy
generator whose state is checkpointed every epoch together with the model, optimizer, scheduler and
grad-scaler state, so ``resume=True`` continues exactly, and a killed run loses at most the current epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import param_groups
from ..data.case import Case
from ..inference import sliding_window_inference
from ..model import UniSeg
from .augment import augment_batch, build_augmentation
from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, group_context, init_distributed
from .losses import DeepSupervisionLoss
from .metrics import nanmean, segmentation_metrics
from .plots import plot_curves
from .sampling import PatchSampler

__all__ = ["TrainResult", "finetune", "evaluate", "predict_volume"]

logger = logging.getLogger(__name__)

LATEST, BEST = "checkpoint_latest.pt", "checkpoint_best.pt"


@dataclass
class TrainResult:
    """What a fine-tuning run produced.

    Attributes:
        history: one dict per epoch (``epoch``, ``train_loss``, ``lr``, ``time_s``, and after validation
            ``val_loss``, ``val_mean_dice``, ``val_mean_hd95``, ``val_dice/<class>``, ``val_hd95/<class>``).
        dice, hd95: final per-class validation Dice / HD95 (mm), keyed by class name.
        mean_dice, mean_hd95: their means over classes (``nan`` without validation cases).
        wall_time_s: training wall time over all (resumed) runs; peak_memory_mb: peak CUDA memory allocated
            (on CPU: the process's peak resident memory).
        checkpoints: ``{"latest": path, "best": path}`` (paths that exist).
    """

    history: list[dict[str, Any]]
    dice: dict[str, float] = field(default_factory=dict)
    hd95: dict[str, float] = field(default_factory=dict)
    mean_dice: float = float("nan")
    mean_hd95: float = float("nan")
    wall_time_s: float = 0.0
    peak_memory_mb: float = 0.0
    checkpoints: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Prediction and evaluation
# ---------------------------------------------------------------------------------------------------------------
def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _task_classes(model: nn.Module, task: int | None) -> int:
    """How many output channels belong to ``task`` (UniSeg tasks may use fewer than the heads provide)."""
    if task is None or not isinstance(model, UniSeg):
        return model.num_classes
    tasks = model.config.tasks
    if len(tasks) > task:
        return min(tasks[task].num_classes, model.num_classes)
    if task == getattr(model, "new_task_id", None):
        return getattr(model, "new_task_num_classes", model.num_classes)
    return model.num_classes


def predict_volume(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    task_id: int | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    mirror: bool = False,
    sw_batch_size: int = 1,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """Whole-volume class probabilities ``(K, D, H, W)`` of a ``(C, D, H, W)`` image (on the CPU).

    Uses :func:`uniseg_hub.inference.sliding_window_inference` (the official ``predict_3D``: Gaussian-weighted
    windows, softmax per window); ``roi_size`` defaults to the model's patch size (UniSeg needs exactly that);
    ``mirror`` averages the 8 flips of the three spatial axes.
    """
    device = _resolve_device(device)
    roi = list(roi_size or model.config.patch_size)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if not isinstance(image, torch.Tensor) else image).float()
    if x.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W), got shape {tuple(x.shape)}")
    if isinstance(model, UniSeg):
        if task_id is None:
            raise ValueError("a UniSeg model needs the task id of the case (Case.task_id or task_id=...)")
        if roi != model.config.patch_size:
            raise ValueError(f"UniSeg predicts with windows of exactly its patch size {model.config.patch_size}, got roi_size {roi}")
    with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        probs = sliding_window_inference(x, roi, sw_batch_size, model, overlap=overlap, task_id=task_id,
                                         mirror_axes=(0, 1, 2) if mirror else (), device=device)
    return probs.float().cpu()


def _class_names(model: nn.Module, task: int | None, k: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        names = list(class_names)
        if len(names) == k:
            names = names[1:]
        if len(names) != k - 1:
            raise ValueError(f"class_names must name the {k - 1} foreground classes (or all {k} with background), got {len(names)}")
        return names
    if isinstance(model, UniSeg) and task is not None and len(model.config.tasks) > task:
        labels = model.config.tasks[task].labels
        if len(labels) == k - 1:
            return [labels[str(c)] for c in range(1, k)]
    return [str(c) for c in range(1, k)]


def evaluate(
    model: nn.Module,
    cases: Sequence[Case],
    *,
    task_id: int | None = None,
    class_names: Sequence[str] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    mirror: bool = False,
    sw_batch_size: int = 1,
    device: str | torch.device | None = None,
    amp: bool = False,
    hd95: bool = True,
    loss_fn: nn.Module | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """Segment whole volumes by sliding windows and score them: per-class Dice and HD95 (mm).

    Args:
        cases: labelled cases; a case's own ``task_id`` wins over ``task_id`` (UniSeg models only).
        class_names: foreground class names (default: the task's labels, else ``"1"``, ``"2"``, ...); when the
            cases span several tasks, keys are ``"<task name or id>/<class>"``.
        loss_fn: when given, also the mean loss of the whole-volume logits (``val_loss``; per case ``"loss"``).
        distributed: every rank of the initialised process group calls this with the same cases; rank ``r``
            scores ``cases[r::world_size]`` and all ranks return the result of all cases (as one process would).

    Returns:
        ``{"dice": {class: mean over cases}, "hd95": {...}, "mean_dice", "mean_hd95", "loss", "per_case": [...]}``.
    """
    device = _resolve_device(device)
    ctx = group_context(device) if distributed else DistributedContext(device=device)
    was_training, ds = model.training, getattr(model, "deep_supervision", False)
    model.eval()
    if ds:
        model.set_deep_supervision(False)
    tasks = {c.task_id if c.task_id is not None else task_id for c in cases}
    per_case = []
    try:
        for case in list(cases)[ctx.rank::ctx.world_size]:
            if case.label is None:
                raise ValueError(f"case {case.name!r} has no label to evaluate against")
            task = case.task_id if case.task_id is not None else task_id
            k = _task_classes(model, task)
            probs = predict_volume(model, case.image, task_id=task, roi_size=roi_size, overlap=overlap, mirror=mirror,
                                   sw_batch_size=sw_batch_size, device=device, amp=amp)
            row: dict[str, Any] = {"name": case.name, "task_id": task}
            if loss_fn is not None:  # log-probabilities are logits whose softmax is the prediction
                row["loss"] = float(loss_fn(probs.clamp_min(1e-8).log()[None], torch.as_tensor(case.label).long()[None]))
            pred = probs[:k].argmax(0).numpy()
            m = segmentation_metrics(pred, case.label, k, spacing=case.spacing, hd95=hd95)
            names = _class_names(model, task, k, class_names)
            if len(tasks) > 1:
                tname = model.config.tasks[task].name if isinstance(model, UniSeg) and len(model.config.tasks) > task else str(task)
                names = [f"{tname}/{n}" for n in names]
            for c, n in enumerate(names, start=1):
                row[f"dice/{n}"], row[f"hd95/{n}"] = m["dice"][c], m["hd95"][c]
            per_case.append(row)
    finally:
        if ds:
            model.set_deep_supervision(True)
        model.train(was_training)
    if ctx.enabled:  # back to the order of ``cases``: case i was scored by rank i % world_size
        shards = ctx.gather(per_case)
        per_case = [shards[i % ctx.world_size][i // ctx.world_size] for i in range(len(cases))]
    dice_acc, hd_acc = {}, {}
    for row in per_case:
        for key, value in row.items():
            if key.startswith("dice/"):
                dice_acc.setdefault(key[5:], []).append(value)
            elif key.startswith("hd95/"):
                hd_acc.setdefault(key[5:], []).append(value)
    losses = [row["loss"] for row in per_case if "loss" in row]
    dice = {n: nanmean(v) for n, v in dice_acc.items()}
    hd = {n: nanmean(v) for n, v in hd_acc.items()}
    return dict(dice=dice, hd95=hd, mean_dice=nanmean(dice.values()), mean_hd95=nanmean(hd.values()),
                loss=float(np.mean(losses)) if losses else None, per_case=per_case)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
def _write_logs(out: Path, history: list[dict[str, Any]], config: TrainConfig) -> None:
    tmp = out / "log.json.tmp"
    tmp.write_text(json.dumps({"config": config.to_dict(), "history": history}, indent=2, default=str) + "\n")
    os.replace(tmp, out / "log.json")
    columns: list[str] = []
    for h in history:
        columns += [k for k in h if k not in columns]
    tmp = out / "log.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, out / "log.csv")
    plot_curves(history, out / "curves.png")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def finetune(
    model: nn.Module,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case] | None,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    task_id: int | None = None,
    class_names: Sequence[str] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``train_cases`` with the official downstream recipe (see :class:`TrainConfig`).

    Args:
        model: a :class:`~uniseg_hub.model.UniSegBackbone` (e.g. from :func:`uniseg_hub.adapters.from_upstream`)
            or a :class:`~uniseg_hub.model.UniSeg`; trained in place (frozen parameters stay frozen).
        train_cases, val_cases: preprocessed labelled cases; labels ``0..K-1`` (for UniSeg: within the case's
            task). Validation segments whole volumes (sliding window) every ``config.val_every`` epochs.
        resume: continue from ``<output_dir>/checkpoint_latest.pt`` (same model, optimizer, scheduler, scaler
            and random states; the result equals an uninterrupted run).
        task_id: task of cases whose ``task_id`` is ``None`` (UniSeg only; default ``model.new_task_id``).
        class_names: foreground class names for the metrics.
        on_epoch_end: called with each epoch's history record after its checkpoint is written (on every rank).

    Distributed (``torchrun --nproc_per_node=N``, see :mod:`uniseg_hub.training.distributed`): every process
    calls ``finetune`` with the same arguments; ``config.batch_size`` is per process (global batch ``N`` x
    ``batch_size``) and the run equals one process with the global batch. Rank 0 alone logs and writes
    checkpoints and log files; validation cases are shared out among the ranks; every rank returns the same result.

    Returns:
        :class:`TrainResult`.
    """
    config = config or TrainConfig()
    ctx = init_distributed(config.device)
    try:
        return _finetune(model, train_cases, val_cases, config, ctx, resume=resume, task_id=task_id,
                         class_names=class_names, on_epoch_end=on_epoch_end)
    finally:
        ctx.close()


def _finetune(
    model: nn.Module,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case] | None,
    config: TrainConfig,
    ctx: DistributedContext,
    *,
    resume: bool,
    task_id: int | None,
    class_names: Sequence[str] | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    device = ctx.device
    prompted = isinstance(model, UniSeg)
    patch = list(config.patch_size or model.config.patch_size)
    if prompted and patch != list(model.config.patch_size):
        raise ValueError(f"UniSeg trains on patches of exactly its prompt's patch size {model.config.patch_size}, got {patch}")
    bad = [p % d for p, d in zip(patch, model.config.divisor)]
    if any(bad):
        raise ValueError(f"patch_size {patch} must be a multiple of the network's total stride {model.config.divisor}")
    default_task = task_id if task_id is not None else getattr(model, "new_task_id", None)
    if prompted and default_task is None and any(c.task_id is None for c in train_cases):
        raise ValueError("UniSeg needs a task id per case: set Case.task_id, pass task_id=..., or use a model from "
                         "from_upstream(strategy='keep-prompt' | 'prompt-tuning')")
    out = Path(config.output_dir) if config.output_dir else None
    if resume and out is None:
        raise ValueError("resume=True needs config.output_dir (where checkpoint_latest.pt is)")
    if out is not None and ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)

    model.to(device)
    model.set_deep_supervision(config.deep_supervision)
    sampler = PatchSampler(train_cases, patch, config.oversample_foreground)
    pipeline = build_augmentation(config)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.SGD(param_groups(model, config.lr, config.layer_decay), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: max(0.0, 1.0 - e / config.epochs) ** config.poly_exponent)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    loss_fn = DeepSupervisionLoss(config.dice_weight, config.ce_weight, config.batch_dice, global_batch=ctx.enabled)
    val_loss_fn = DeepSupervisionLoss(config.dice_weight, config.ce_weight, config.batch_dice)  # one case at a time
    trainable = [p for p in model.parameters() if p.requires_grad]
    history: list[dict[str, Any]] = []
    start_epoch, best, wall_before = 0, -math.inf, 0.0
    if resume:
        ckpt = load_checkpoint(out / LATEST, map_location=device)
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(rng, ckpt["rng"])
        history, start_epoch = list(ckpt["history"]), int(ckpt["epoch"])
        best, wall_before = float(ckpt["best"]), float(ckpt.get("wall_time_s", 0.0))
        changed = {k: (v, config.to_dict().get(k)) for k, v in ckpt.get("config", {}).items() if config.to_dict().get(k) != v}
        if changed and ctx.is_main:
            logger.warning("resuming with a changed config: %s", changed)
        if int(ckpt.get("world_size", 1)) != ctx.world_size and ctx.is_main:
            logger.warning("resuming on %d process(es) a run saved on %d: the global batch changes from %d to %d",
                           ctx.world_size, int(ckpt.get("world_size", 1)), config.batch_size * int(ckpt.get("world_size", 1)),
                           config.batch_size * ctx.world_size)
        if ctx.is_main:
            logger.info("resumed from %s after epoch %d", out / LATEST, start_epoch)
    net = ctx.wrap(model)  # DDP broadcasts rank 0's weights, so every rank starts from the same model
    part, global_batch = ctx.part(config.batch_size), config.batch_size * ctx.world_size
    validate = dict(task_id=default_task, class_names=class_names, roi_size=patch, overlap=config.sw_overlap,
                    mirror=config.mirror, sw_batch_size=config.sw_batch_size, device=device, amp=use_amp,
                    distributed=ctx.enabled)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    last_val: dict[str, Any] | None = None
    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[-1]["lr"]
        losses = []
        bar = tqdm(range(config.iterations_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (config.progress and ctx.is_main))
        for it in bar:
            batch = sampler.sample(rng, global_batch, part=part)
            x, y = augment_batch(pipeline, batch.images, batch.labels, rng, global_batch=global_batch, part=part)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
                if prompted:
                    tasks = torch.tensor([t if t is not None else default_task for t in batch.task_ids], device=device)
                    outputs = net(x, tasks)
                else:
                    outputs = net(x)
            loss = loss_fn(outputs, y)
            if not torch.isfinite(loss) and not use_amp:
                raise FloatingPointError(f"the loss became {float(loss)} at epoch {epoch + 1}, iteration {it}; lower the lr")
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        scheduler.step()
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": ctx.mean(float(np.mean(losses))), "lr": lr}
        if val_cases and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
            last_val = evaluate(model, val_cases, loss_fn=val_loss_fn, **validate)
            record.update(val_loss=last_val["loss"], val_mean_dice=last_val["mean_dice"], val_mean_hd95=last_val["mean_hd95"])
            record.update({f"val_dice/{k}": v for k, v in last_val["dice"].items()})
            record.update({f"val_hd95/{k}": v for k, v in last_val["hd95"].items()})
        record["time_s"] = time.perf_counter() - t_epoch
        history.append(record)
        if ctx.is_main:
            logger.info("epoch %d/%d: train loss %.4f%s", epoch + 1, config.epochs, record["train_loss"],
                        f", val mean Dice {record['val_mean_dice']:.4f}" if "val_mean_dice" in record else "")
        if out is not None:
            improved = record.get("val_mean_dice") is not None and record["val_mean_dice"] > best
            best = record["val_mean_dice"] if improved else best
        if out is not None and ctx.is_main:
            payload = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                           scaler=scaler.state_dict(), epoch=epoch + 1, history=history, best=best, rng=rng_state(rng),
                           config=config.to_dict(), model_config=model.config.to_dict(), world_size=ctx.world_size,
                           wall_time_s=wall_before + time.perf_counter() - t_start)
            save_checkpoint(out / LATEST, payload)
            if improved:
                save_checkpoint(out / BEST, payload)
            _write_logs(out, history, config)
        ctx.barrier()  # every rank passes an epoch only once its checkpoint is on disk
        if on_epoch_end is not None:
            on_epoch_end(record)
    wall = wall_before + time.perf_counter() - t_start
    if val_cases and last_val is None:  # e.g. resuming a finished run
        last_val = evaluate(model, val_cases, **validate)
    model.set_deep_supervision(False)
    result = TrainResult(history=history, wall_time_s=wall, peak_memory_mb=_peak_memory_mb(device),
                         output_dir=str(out) if out else None)
    if last_val is not None:
        result.dice, result.hd95 = last_val["dice"], last_val["hd95"]
        result.mean_dice, result.mean_hd95 = last_val["mean_dice"], last_val["mean_hd95"]
    if out is not None:
        result.checkpoints = {k: str(out / f) for k, f in (("latest", LATEST), ("best", BEST)) if (out / f).exists()}
    return result
