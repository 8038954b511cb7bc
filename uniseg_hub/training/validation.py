"""Validation: whole-volume scoring of a model, on preprocessed arrays (cheap, during training) or through the
predictor on the raw files (what ``uniseg-hub predict`` would write, scored on the raw label grid).

* :func:`evaluate` — sliding window over preprocessed :class:`~uniseg_hub.data.Case` arrays, Dice/HD95 on the
  preprocessed grid (voxels outside the nonzero region, label -1, count as background). ``finetune`` runs it
  every ``val_every`` epochs.
* :func:`validate_with_predictor` — :class:`~uniseg_hub.inference.UniSegPredictor` with its default settings on the
  raw image files of each case (``case.meta["images"]``), labels written with the data set's label values, Dice
  and HD95 (mm) against the raw label file on its own grid: ``predict`` + an independent Dice reproduces it.
  ``finetune``'s final validation.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.case import Case
from ..resources import resolve_device
from ..inference import UniSegPredictor, sliding_window_inference
from ..preprocessing import load_image, load_label
from .distributed import DistributedContext, group_context
from .metrics import nanmean, segmentation_metrics

__all__ = ["predict_volume", "evaluate", "validate_with_predictor", "summarise"]

logger = logging.getLogger(__name__)


def _is_prompted(model: nn.Module) -> bool:
    return getattr(model.config, "num_tasks", 0) > 0


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
    """Whole-volume class probabilities ``(K, D, H, W)`` of a preprocessed ``(C, D, H, W)`` image (on the CPU).

    :func:`uniseg_hub.inference.sliding_window_inference` (the official ``predict_3D``: Gaussian-weighted windows,
    softmax per window); ``roi_size`` defaults to the model's patch size (UniSeg needs exactly that); ``mirror``
    averages the 8 flips of the three spatial axes. ``task_id`` defaults to the model's default task.
    """
    device = resolve_device(device)
    roi = list(roi_size or model.config.patch_size)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if not isinstance(image, torch.Tensor) else image).float()
    if x.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W), got shape {tuple(x.shape)}")
    if _is_prompted(model):
        task_id = model.config.resolve_task(task_id)
        if roi != model.config.patch_size:
            raise ValueError(f"UniSeg predicts with windows of exactly its patch size {model.config.patch_size}, got roi_size {roi}")
    else:
        task_id = None
    with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        probs = sliding_window_inference(x, roi, sw_batch_size, model, overlap=overlap, task_id=task_id,
                                         mirror_axes=(0, 1, 2) if mirror else (), device=device)
    return probs.float().cpu()


def _names(model: nn.Module, task: int | None, k: int, prefix: bool) -> list[str]:
    spec = model.config.task_spec(task)
    names = spec.class_names if spec is not None and spec.num_classes == k else [str(c) for c in range(1, k)]
    if prefix:
        tname = spec.name if spec is not None else str(task)
        names = [f"{tname}/{n}" for n in names]
    return names


def summarise(per_case: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-class means over cases (``nan`` classes ignored) of ``dice/<class>`` and ``hd95/<class>`` rows."""
    dice_acc: dict[str, list[float]] = {}
    hd_acc: dict[str, list[float]] = {}
    for row in per_case:
        for key, value in row.items():
            if key.startswith("dice/"):
                dice_acc.setdefault(key[5:], []).append(value)
            elif key.startswith("hd95/"):
                hd_acc.setdefault(key[5:], []).append(value)
    losses = [row["loss"] for row in per_case if row.get("loss") is not None]
    dice = {n: nanmean(v) for n, v in dice_acc.items()}
    hd = {n: nanmean(v) for n, v in hd_acc.items()}
    return dict(dice=dice, hd95=hd, mean_dice=nanmean(dice.values()), mean_hd95=nanmean(hd.values()),
                loss=float(np.mean(losses)) if losses else None, per_case=list(per_case))


def evaluate(
    model: nn.Module,
    cases: Sequence[Case],
    *,
    task_id: int | None = None,
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
    """Segment preprocessed volumes by sliding windows and score them on their grid: per-class Dice and HD95 (mm).

    Args:
        cases: labelled cases (class indices; -1 = outside the nonzero region, scored as background); a case's own
            ``task_id`` wins over ``task_id`` (prompt models; default: the model's default task).
        loss_fn: also report the validation loss (the training loss on log-probabilities).
        distributed: share the cases among the ranks of the process group (every rank gets the whole result).

    Returns:
        ``{"dice": {class: mean over cases}, "hd95": {...}, "mean_dice", "mean_hd95", "loss", "per_case": [...]}``;
        class names come from the model's task description (``config.task_spec``), prefixed by the task name
        when the cases span several tasks.
    """
    device = resolve_device(device)
    ctx = group_context(device) if distributed else DistributedContext(device=device)
    was_training, ds = model.training, getattr(model, "deep_supervision", False)
    model.eval()
    if ds:
        model.set_deep_supervision(False)
    prompted = _is_prompted(model)
    tasks_of = [(c.task_id if c.task_id is not None else task_id) if prompted else None for c in cases]
    if prompted:
        tasks_of = [model.config.resolve_task(t) for t in tasks_of]
    several = len(set(tasks_of)) > 1
    per_case = []
    try:
        for i in range(ctx.rank, len(cases), ctx.world_size):
            case, task = cases[i], tasks_of[i]
            if case.label is None:
                raise ValueError(f"case {case.name!r} has no label to evaluate against")
            k = model.config.task_num_classes(task)
            probs = predict_volume(model, case.image, task_id=task, roi_size=roi_size, overlap=overlap, mirror=mirror,
                                   sw_batch_size=sw_batch_size, device=device, amp=amp)
            ref = np.where(case.label < 0, 0, case.label)
            row: dict[str, Any] = {"name": case.name, "task_id": task}
            if loss_fn is not None:  # log-probabilities are logits whose softmax is the prediction
                row["loss"] = float(loss_fn(probs[:k].clamp_min(1e-8).log()[None], torch.as_tensor(ref).long()[None]))
            m = segmentation_metrics(probs[:k].argmax(0).numpy(), ref, k, spacing=case.spacing, hd95=hd95)
            for c, n in enumerate(_names(model, task, k, several), start=1):
                row[f"dice/{n}"], row[f"hd95/{n}"] = m["dice"][c], m["hd95"][c]
            per_case.append(row)
    finally:
        if ds:
            model.set_deep_supervision(True)
        model.train(was_training)
    if ctx.enabled:  # back to the order of ``cases``: case i was scored by rank i % world_size
        shards = ctx.gather(per_case)
        per_case = [shards[i % ctx.world_size][i // ctx.world_size] for i in range(len(cases))]
    return summarise(per_case)


def validate_with_predictor(
    model: nn.Module,
    cases: Sequence[Case],
    *,
    task_id: int | None = None,
    device: str | torch.device | None = None,
    hd95: bool = True,
    **predictor_kwargs: Any,
) -> dict[str, Any]:
    """Score the model as ``uniseg-hub predict`` would be scored: the predictor (default settings unless
    ``predictor_kwargs`` say otherwise) on each case's raw files, against its raw label file on the raw grid.

    Every case needs ``meta["images"]`` and ``meta["label"]`` (what :func:`uniseg_hub.preprocessing.preprocess_case`
    records). Returns the same structure as :func:`evaluate`, plus ``"setting"`` describing the predictor.
    """

    missing = [c.name for c in cases if not (c.meta.get("images") and c.meta.get("label"))]
    if missing:
        raise ValueError(f"cases {missing[:5]} do not record their raw files (meta['images'], meta['label']): "
                         "build them with uniseg_hub.preprocessing.preprocess_case, or use evaluate()")
    device = resolve_device(device)
    was_training, ds = model.training, getattr(model, "deep_supervision", False)
    if ds:
        model.set_deep_supervision(False)
    predictor = UniSegPredictor(model, device=device, **predictor_kwargs)
    prompted = _is_prompted(model)
    tasks_of = [model.config.resolve_task(c.task_id if c.task_id is not None else task_id) if prompted else None for c in cases]
    several = len(set(tasks_of)) > 1
    per_case = []
    try:
        for case, task in zip(cases, tasks_of):
            image = load_image(case.meta["images"])
            result = predictor.predict(image, task=task)
            spec = model.config.task_spec(task)
            k = model.config.task_num_classes(task)
            values = spec.label_values if spec is not None else list(range(k))
            ref_values = load_label(case.meta["label"], image)
            lut = {v: i for i, v in enumerate(values)}
            unknown = sorted(set(np.unique(ref_values).tolist()) - set(lut))
            if unknown:
                raise ValueError(f"case {case.name!r}: label values {unknown} of {case.meta['label']} are not classes of the "
                                 f"model's task (label values {values})")
            to_index = np.zeros(max(max(values), int(ref_values.max()), int(result.labels.max())) + 1, dtype=np.int64)
            for v, i in lut.items():
                to_index[v] = i
            m = segmentation_metrics(to_index[result.labels], to_index[ref_values], k, spacing=image.spacing, hd95=hd95)
            row: dict[str, Any] = {"name": case.name, "task_id": task}
            for c, n in enumerate(_names(model, task, k, several), start=1):
                row[f"dice/{n}"], row[f"hd95/{n}"] = m["dice"][c], m["hd95"][c]
            per_case.append(row)
    finally:
        if ds:
            model.set_deep_supervision(True)
        model.train(was_training)
    out = summarise(per_case)
    out["setting"] = (f"UniSegPredictor on the raw files (overlap {predictor.overlap}, mirror "
                      f"{list(predictor.mirror_axes) if predictor.mirror else 'off'}), scored on the raw label grid")
    return out
