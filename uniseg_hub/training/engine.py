"""The fine-tuning front door (:func:`finetune`): data sampling and augmentation around :class:`Trainer`, validation,
checkpoints with exact resume, and the model folders a run ends with.

One loop serves the prompt-free :class:`~uniseg_hub.models.uniseg.UniSegBackbone` and the prompt-driven
:class:`~uniseg_hub.models.uniseg.UniSeg` (each sample is fed its own task id and its loss uses its own task's output
channels, so several tasks can share a run: the upstream multi-task recipe). The run is a pure function of
``config.seed``: sampling and augmentation draw from one numpy generator whose state is checkpointed every epoch
together with the trainer's state, so ``resume=True`` continues exactly, and a killed run loses at most the
current epoch.

A run folder (``config.output_dir``) holds::

    checkpoint_latest.pt   everything to resume (model, optimizer, scaler, epoch, history, random states)
    log.csv, log.json      one row per epoch; curves.png: loss and validation Dice
    best/                  save_pretrained folder of the epoch with the best periodic validation Dice
    final/                 save_pretrained folder of the finished model: config.json (plan, class names),
                           model.safetensors, README.md (model card: upstream weights, strategy, recipe, data, Dice)
    result.json            final validation (predictor on the raw files), times, paths

Every file and folder of it is written atomically (:mod:`uniseg_hub.atomic`): a run killed at any moment leaves each
one complete, in its previous or its new version.

``from_pretrained(run_folder)``, ``uniseg-hub predict --weights RUN_FOLDER`` and ``uniseg-hub info RUN_FOLDER`` load
``final/``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_file, atomic_write_text
from ..data.case import Case
from ..weights.safetensors_dir import save_folder
from ..models.perf import optimize_for_training
from .augment import augment_batch, build_augmentation
from .checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, init_distributed
from .losses import DeepSupervisionLoss
from .plots import plot_curves
from .sampling import PatchSampler, sampling_patch_size
from .trainer import Trainer
from .validation import evaluate, validate_with_predictor

__all__ = ["TrainResult", "finetune", "check_run_folder", "LATEST", "FINAL", "BEST", "RESULT"]

logger = logging.getLogger(__name__)

LATEST, FINAL, BEST, RESULT = "checkpoint_latest.pt", "final", "best", "result.json"


@dataclass
class TrainResult:
    """What a fine-tuning run produced.

    Attributes:
        history: one dict per epoch (``epoch``, ``train_loss``, ``lr``, ``time_s``, and after periodic validation
            ``val_loss``, ``val_mean_dice``, ``val_dice/<class>``; HD95 only in the final validation).
        dice, hd95, mean_dice, mean_hd95, per_case: the final validation (``nan`` without validation cases).
        validation: how the final validation was measured.
        wall_time_s: training wall time over all (resumed) runs; peak_memory_mb: peak CUDA memory allocated
            (on CPU: the process's peak resident memory).
        checkpoints: ``{"latest": path}``; model_dirs: ``{"final": path, "best": path}`` (those written).
    """

    history: list[dict[str, Any]]
    dice: dict[str, float] = field(default_factory=dict)
    hd95: dict[str, float] = field(default_factory=dict)
    mean_dice: float = float("nan")
    mean_hd95: float = float("nan")
    per_case: list[dict[str, Any]] = field(default_factory=list)
    validation: str = "none (no validation cases)"
    wall_time_s: float = 0.0
    peak_memory_mb: float = 0.0
    checkpoints: dict[str, str] = field(default_factory=dict)
    model_dirs: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_logs(out: Path, history: list[dict[str, Any]], config: TrainConfig, resumed_at: Sequence[int]) -> None:
    atomic_write_text(out / "log.json", json.dumps(
        {"config": config.to_dict(), "history": history, "resumed_after_epochs": list(resumed_at)}, indent=2, default=str) + "\n")
    columns: list[str] = []
    for h in history:
        columns += [k for k in h if k not in columns]
    with atomic_file(out / "log.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, out / "curves.png", resumed_at=resumed_at)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def check_run_folder(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run in a folder that is not empty unless asked (``resume`` continues the run there,
    ``overwrite`` replaces it); the error says what the folder holds. Called before any work starts."""
    out = Path(out)
    if resume:
        if not (out / LATEST).is_file():
            raise FileNotFoundError(f"cannot resume: {out / LATEST} does not exist (start the run without --resume)")
        return
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"output folder {out} exists and is not a folder")
    found = sorted(p.name for p in out.iterdir())
    if found and not overwrite:
        earlier = [n for n in found if n in (LATEST, FINAL, BEST, RESULT, "log.json")]
        epoch = ""
        if (out / "log.json").is_file():
            try:
                epoch = f" after {len(json.loads((out / 'log.json').read_text())['history'])} epoch(s)"
            except (ValueError, KeyError, OSError):
                pass
        what = f"a fine-tuning run{epoch}" if earlier else f"{len(found)} other file(s)"
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise ValueError(f"{out} is not empty: it holds {what} ({shown}): continue a run with resume=True (--resume), "
                         "replace it with overwrite=True (--overwrite), or choose another folder")


def _save_model_folder(model: nn.Module, folder: Path, provenance: dict[str, Any]) -> Path:
    """``save_pretrained`` of ``model`` without deep supervision, with ``provenance`` in its config (model card)."""
    cfg = model.config.replace(deep_supervision=False, provenance=provenance)
    return save_folder(model.state_dict(), cfg, folder)


def _mask_channels(model: nn.Module, task: int | None) -> list[int]:
    """Channels whose normalisation used the nonzero mask (nnU-Net's MaskTransform zeroes them outside it)."""
    spec = model.config.task_spec(task)
    if spec is None:
        return []
    pp = model.config.preprocessing
    out = []
    for c, m in enumerate(spec.modalities):
        try:
            if pp.scheme_for(m).get("use_nonzero_mask"):
                out.append(c)
        except KeyError:
            pass
    return out


def finetune(
    model: nn.Module,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case] | None = None,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    task_id: int | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    final_validation: str = "auto",
) -> TrainResult:
    """Fine-tune ``model`` on ``train_cases`` with the official recipe (see :class:`TrainConfig`), through :class:`Trainer`.

    Args:
        model: a :class:`~uniseg_hub.models.uniseg.UniSegBackbone` (e.g. from :func:`uniseg_hub.models.adapters.from_upstream`)
            or a :class:`~uniseg_hub.models.uniseg.UniSeg`; trained in place (frozen parameters stay frozen). Its config
            should carry the data set's plan and class names (``from_upstream(..., plan=..., task=...)``).
        train_cases, val_cases: preprocessed labelled cases (:func:`uniseg_hub.preprocessing.preprocess_case`).
        resume: continue from ``<output_dir>/checkpoint_latest.pt`` (the result equals an uninterrupted run).
        overwrite: start afresh in an ``output_dir`` that holds an earlier run (otherwise that is refused).
        task_id: prompt models: the task of cases whose ``task_id`` is ``None`` (default: ``config.default_task``).
        on_epoch_end: called with each epoch's history record after its checkpoint is written (on every rank).
        final_validation: ``"predictor"``: the :class:`~uniseg_hub.inference.UniSegPredictor` with default
            settings on the cases' raw files, scored on the raw label grid (what ``predict`` + an independent
            Dice gives); ``"arrays"``: sliding window on the preprocessed arrays; ``"auto"``: the predictor when
            every validation case records its raw files, else the arrays (logged).

    Periodic validation (every ``config.val_every`` epochs) runs on the preprocessed arrays without mirroring
    (cheap) and picks ``best/``. Distributed (``torchrun --nproc_per_node=N``): every process calls ``finetune``
    with the same arguments; ``config.batch_size`` is per process and the run equals one process with the global
    batch; rank 0 alone writes.

    Returns:
        :class:`TrainResult` (also written to ``<output_dir>/result.json``).
    """
    config = config or TrainConfig()
    if final_validation not in ("auto", "predictor", "arrays"):
        raise ValueError(f"final_validation must be 'auto', 'predictor' or 'arrays', got {final_validation!r}")
    ctx = init_distributed(config.device)
    try:
        return _finetune(model, list(train_cases), list(val_cases or []), config, ctx, resume=resume, overwrite=overwrite,
                         task_id=task_id, on_epoch_end=on_epoch_end, final_validation=final_validation)
    finally:
        ctx.close()


def _finetune(model: nn.Module, train_cases: list[Case], val_cases: list[Case], config: TrainConfig,
              ctx: DistributedContext, *, resume: bool, overwrite: bool, task_id: int | None,
              on_epoch_end: Callable[[dict[str, Any]], None] | None, final_validation: str) -> TrainResult:
    prompted = getattr(model.config, "num_tasks", 0) > 0
    patch = list(config.patch_size or model.config.patch_size)
    if prompted and patch != list(model.config.patch_size):
        raise ValueError(f"UniSeg trains on patches of exactly its prompt's patch size {model.config.patch_size}, got {patch}")
    if any(p % d for p, d in zip(patch, model.config.divisor)):
        raise ValueError(f"patch_size {patch} must be a multiple of the network's total stride {model.config.divisor}")
    default_task = task_id if task_id is not None else (model.config.default_task if prompted else None)
    if prompted and default_task is None and any(c.task_id is None for c in train_cases):
        raise ValueError("UniSeg needs a task id per case: set Case.task_id, pass task_id=..., or use a model from "
                         "from_upstream(strategy='keep-prompt' | 'prompt-tuning'), whose config names its new task")
    out = Path(config.output_dir) if config.output_dir else None
    if resume and out is None:
        raise ValueError("resume=True needs config.output_dir (where checkpoint_latest.pt is)")
    if out is not None and ctx.is_main:
        check_run_folder(out, resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
    if config.channels_last or config.grad_checkpointing:
        optimize_for_training(model, channels_last=config.channels_last, grad_checkpointing=config.grad_checkpointing)

    # what prediction may mirror: the axes this training mirrors along (nnU-Net's inference_allowed_mirroring_axes)
    aug_cfg = config.augmentation
    model.config.mirror_axes = list(aug_cfg.mirror_axes) if config.augment and aug_cfg.p_mirror > 0 else []
    torch.manual_seed(config.seed)
    trainer = Trainer(model, config, ctx=ctx)
    aug = config.augmentation if config.augment else None
    sampler = PatchSampler(train_cases, patch, config.oversample_foreground, sampling_patch_size=sampling_patch_size(patch, aug))
    pipeline = build_augmentation(aug, patch, mask_channels=_mask_channels(model, default_task)) if aug is not None else None
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, Any]] = []
    resumed_at: list[int] = []
    start_epoch, best, wall_before = 0, -math.inf, 0.0
    if resume:
        ckpt = load_checkpoint(out / LATEST, map_location=trainer.device)
        trainer.load_state_dict(ckpt["trainer"])
        restore_rng_state(rng, ckpt["rng"])
        history, start_epoch = list(ckpt["history"]), int(ckpt["epoch"])
        best, wall_before = float(ckpt["best"]), float(ckpt.get("wall_time_s", 0.0))
        resumed_at = [*ckpt.get("resumed_at", []), start_epoch]
        saved = TrainConfig.from_dict(ckpt["config"]).to_dict() if "config" in ckpt else {}
        changed = {k: (v, config.to_dict().get(k)) for k, v in saved.items() if config.to_dict().get(k) != v}
        if changed and ctx.is_main:
            logger.warning("resuming with a changed config (saved, now): %s", changed)
        if int(ckpt.get("world_size", 1)) != ctx.world_size and ctx.is_main:
            logger.warning("resuming on %d process(es) a run saved on %d: the global batch changes from %d to %d",
                           ctx.world_size, int(ckpt.get("world_size", 1)), config.batch_size * int(ckpt.get("world_size", 1)),
                           config.batch_size * ctx.world_size)
        if ctx.is_main:
            logger.info("resumed from %s after epoch %d", out / LATEST, start_epoch)
    part, global_batch = ctx.part(config.batch_size), config.batch_size * ctx.world_size
    periodic = dict(task_id=default_task, roi_size=patch, overlap=config.sw_overlap, mirror=config.mirror,
                    sw_batch_size=config.sw_batch_size, device=trainer.device, amp=trainer.use_amp, distributed=ctx.enabled,
                    hd95=False)
    # validation splits the cases over the ranks, so its loss must not sum Dice statistics across them (the
    # training loss does): a rank with fewer cases would leave the others waiting in the all-reduce
    val_loss = DeepSupervisionLoss(config.dice_weight, config.ce_weight, config.batch_dice, config.dice_smooth)
    if val_cases and ctx.is_main and start_epoch < config.epochs:
        logger.info("periodic validation every %d epoch(s): sliding window on the preprocessed arrays (overlap %.2f, "
                    "mirroring %s), Dice only; the final validation runs the predictor on the raw files",
                    config.val_every, config.sw_overlap, "on" if config.mirror else "off")
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    t_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        lr = trainer.set_epoch(epoch)
        losses = []
        bar = tqdm(range(config.iterations_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (config.progress and ctx.is_main))
        for _ in bar:
            batch = sampler.sample(rng, global_batch, part=part)
            x, y = augment_batch(pipeline, batch.images, batch.labels, rng, patch_size=patch, global_batch=global_batch, part=part)
            losses.append(trainer.step(x, y, batch.task_ids if prompted else None))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": ctx.mean(float(np.mean(losses))), "lr": lr}
        if val_cases and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
            val = evaluate(model, val_cases, loss_fn=val_loss, **periodic)
            record.update(val_loss=val["loss"], val_mean_dice=val["mean_dice"])
            record.update({f"val_dice/{k}": v for k, v in val["dice"].items()})
        record["time_s"] = time.perf_counter() - t_epoch
        history.append(record)
        if ctx.is_main:
            logger.info("epoch %d/%d: train loss %.4f%s", epoch + 1, config.epochs, record["train_loss"],
                        f", val mean Dice {record['val_mean_dice']:.4f}" if "val_mean_dice" in record else "")
        improved = record.get("val_mean_dice") is not None and math.isfinite(record["val_mean_dice"]) and record["val_mean_dice"] > best
        best = record["val_mean_dice"] if improved else best
        if out is not None and ctx.is_main:
            if improved:
                _save_model_folder(model, out / BEST, _provenance(model, config, train_cases, history,
                                                                  {"periodic_mean_dice": record["val_mean_dice"], "epoch": epoch + 1,
                                                                   "setting": "sliding window on the preprocessed arrays"}))
            payload = dict(trainer=trainer.state_dict(), epoch=epoch + 1, history=history, best=best, rng=rng_state(rng),
                           config=config.to_dict(), model_config=model.config.to_dict(), world_size=ctx.world_size,
                           resumed_at=resumed_at, wall_time_s=wall_before + time.perf_counter() - t_start)
            save_checkpoint(out / LATEST, payload)
            _write_logs(out, history, config, resumed_at)
        ctx.barrier()  # every rank passes an epoch only once its checkpoint is on disk
        if on_epoch_end is not None:
            on_epoch_end(record)
    wall = wall_before + time.perf_counter() - t_start
    model.set_deep_supervision(False)
    model.eval()
    result = TrainResult(history=history, wall_time_s=wall, peak_memory_mb=_peak_memory_mb(trainer.device),
                         output_dir=str(out) if out else None)
    if val_cases:
        use_predictor = final_validation == "predictor" or (
            final_validation == "auto" and all(c.meta.get("images") and c.meta.get("label") for c in val_cases))
        if use_predictor:
            val = validate_with_predictor(model, val_cases, task_id=default_task, device=trainer.device)
        else:
            val = evaluate(model, val_cases, **{**periodic, "distributed": False, "hd95": True})
            val["setting"] = "sliding window on the preprocessed arrays (the cases record no raw files)"
        logger.info("final validation (%s): mean Dice %.4f", val["setting"], val["mean_dice"])
        result.dice, result.hd95, result.per_case = val["dice"], val["hd95"], val["per_case"]
        result.mean_dice, result.mean_hd95, result.validation = val["mean_dice"], val["mean_hd95"], val["setting"]
    if out is not None and ctx.is_main:
        validation = {"mean_dice": result.mean_dice, "dice": result.dice, "mean_hd95": result.mean_hd95,
                      "setting": result.validation, "cases": [r["name"] for r in result.per_case]}
        _save_model_folder(model, out / FINAL, _provenance(model, config, train_cases, history, validation))
        result.checkpoints = {"latest": str(out / LATEST)}
        result.model_dirs = {k: str(out / k) for k in (FINAL, BEST) if (out / k / "model.safetensors").is_file()}
        atomic_write_text(out / RESULT, json.dumps({k: v for k, v in result.to_dict().items() if k != "history"} | {
            "epochs": len(history), "recipe": config.to_dict(), "provenance": model.config.provenance}, indent=2, default=str) + "\n")
    ctx.barrier()
    return result


def _provenance(model: nn.Module, config: TrainConfig, train_cases: Sequence[Case], history: list[dict[str, Any]],
                validation: dict[str, Any]) -> dict[str, Any]:
    """The model card data of a fine-tuned model: what it was transferred from, the recipe, the data, the Dice."""
    prov = copy.deepcopy(dict(model.config.provenance))
    spec = model.config.task_spec(model.config.default_task) if getattr(model.config, "num_tasks", 0) else model.config.task_spec()
    if spec is not None:
        dataset = spec.name
    else:  # multi-task (prompt-driven) training: the tasks the cases come from
        names = [model.config.tasks[c.task_id].name for c in train_cases
                 if c.task_id is not None and c.task_id < len(model.config.tasks)]
        dataset = ", ".join(dict.fromkeys(names)) or None
    prov["finetuned"] = {
        "dataset": dataset,
        "train_cases": [c.name for c in train_cases],
        "epochs": len(history),
        "recipe": config.to_dict() | {"output_dir": None, "device": None, "progress": None},
        "validation": validation,
        "made_by": "uniseg_hub.training.finetune",
    }
    return prov
