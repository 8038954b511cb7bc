"""Which tasks a scan runs and what it is warned about: the official combined label map of the upstream tasks
(:func:`combined_label_offsets`), the tasks of task ``"all"`` (:func:`tasks_for_all`) and the warnings for raw scans
that break the weights' preprocessing contract (:func:`contract_warnings`; batch validation errors are the
models' ``check_batch``)."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from ..config import UniSegConfig

__all__ = ["combined_label_offsets", "tasks_for_all", "contract_warnings"]



# ---------------------------------------------------------------------------------------------------------------
# Tasks, the combined label map, input checks
# ---------------------------------------------------------------------------------------------------------------
def combined_label_offsets(config: UniSegConfig) -> list[int]:
    """First combined label of each task: foreground labels are numbered consecutively over the tasks in order.

    For the 11 upstream tasks this is the official map: liver 1-2, kidney 3-4, hepatic vessel 5-6, pancreas 7-8,
    colon tumor 9, lung tumor 10, spleen 11, vertebrae 12, prostate 13, brain tumor 14-16, whole-body tumor 17.
    """
    if not config.tasks:
        raise ValueError("the config lists no tasks, so there is no combined label map")
    offsets, nxt = [], 1
    for t in config.tasks:
        offsets.append(nxt)
        nxt += t.num_classes - 1
    return offsets


def _modality_group(modalities: Sequence[str]) -> str:
    return "+".join("MR" if m not in ("CT", "PET") else m for m in modalities)


def tasks_for_all(config: UniSegConfig, channels: int, modality: str | None = None) -> list[int]:
    """The tasks task ``"all"`` runs: those whose input modalities match the scan.

    ``modality`` (e.g. ``"CT"``, ``"MR"``, ``"CT,PET"``) picks among tasks with ``channels`` inputs; for one
    channel it defaults to ``"CT"`` (the official ``-modality`` default use).
    """
    if modality is None:
        cands = {_modality_group(t.modalities) for t in config.tasks if len(t.modalities) == channels}
        modality = "CT" if "CT" in cands else (sorted(cands)[0] if cands else "")
    want = _modality_group([m.strip() for m in modality.replace("+", ",").split(",") if m.strip()])
    ids = [i for i, t in enumerate(config.tasks) if len(t.modalities) == channels and _modality_group(t.modalities) == want]
    if not ids:
        have = sorted({f"{_modality_group(t.modalities)} ({len(t.modalities)} channel(s))" for t in config.tasks})
        raise ValueError(f"task 'all': no task takes {channels} channel(s) of modality {modality!r}; tasks take: {have}")
    return ids


def contract_warnings(
    config: UniSegConfig,
    image: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None,
    task: int | str | None,
    target_spacing: Sequence[float] | None = None,
) -> list[str]:
    """Warn (``warnings.warn``) when a raw scan breaks the weights' preprocessing contract; return the messages.

    Checks: channel count for the task, spacing far (> 3x) from the target, CT channels without HU-like values,
    MR/PET channels that look like CT (HU).

    Args:
        image: raw ``(C, Z, Y, X)`` intensities (before normalisation).
        spacing: its ``(z, y, x)`` spacing in mm, or ``None`` if unknown.
        task: task id or name (``None``: a backbone's only task, or the model's default task).
        target_spacing: the spacing the scan will be resampled to (default ``config.preprocessing.spacing``).
    """
    t = config.task_spec(config.resolve_task(task))
    msgs: list[str] = []
    img = torch.as_tensor(image)
    if t is not None and img.shape[0] != len(t.modalities):
        msgs.append(f"task {t.name!r} expects {len(t.modalities)} channel(s) {t.modalities}, got {img.shape[0]}")
    target = list(target_spacing) if target_spacing is not None else config.preprocessing.spacing
    if spacing is not None:
        ratio = [s / g for s, g in zip(spacing, target)]
        if any(r > 3 or r < 1 / 3 for r in ratio):
            msgs.append(
                f"input spacing {tuple(round(s, 3) for s in spacing)} mm is far from the model's {tuple(target)} mm "
                "(more than 3x on an axis): results may degrade; check the header spacing"
            )
    if t is not None:
        for c, mod in enumerate(t.modalities[: img.shape[0]]):
            lo, hi = float(img[c].min()), float(img[c].max())
            if mod == "CT" and lo > -200 and config.preprocessing.scheme_for("CT")["scheme"] in ("clip_rescale", "ct"):
                msgs.append(f"channel {c} is CT for task {t.name!r} but has no values below -200 (min {lo:g}): is it in Hounsfield units (not MR or already normalised)?")
            elif mod != "CT" and lo < -500 and hi > 300:
                msgs.append(f"channel {c} should be {mod} for task {t.name!r} but looks like CT in Hounsfield units (range {lo:g}..{hi:g})")
    for m in msgs:
        warnings.warn(m, UserWarning, stacklevel=2)
    return msgs
