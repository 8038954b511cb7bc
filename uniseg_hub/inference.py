"""Whole-volume prediction equivalent to the official UniSeg/nnU-Net v1 ``predict_3D``, plus scan-level inference.

* :func:`sliding_window_inference` — nnU-Net v1 ``_internal_predict_3D_3Dconv_tiled`` with MONAI-style argument
  names: zero-pad volumes smaller than the patch (centred), windows at ``_compute_steps_for_sliding_window``
  positions, softmax per window, optional mirroring over every flip combination of ``mirror_axes`` (averaged),
  Gaussian importance weighting (``sigma = roi * sigma_scale``), division by the summed weights.
* :func:`check_input` — warnings for inputs that break the weights' preprocessing contract.
* :class:`UniSegPredictor` — files in, label map out: preprocessing (:mod:`uniseg_hub.preprocessing`), one task
  (class restriction: keep the task's first ``num_classes`` channels, then argmax, as the official predictor does
  since 2023-07-19) or task ``"all"`` (every task of the input's modality merged into the official combined label
  map), and the result restored onto the input's voxel grid.

Why not ``monai.inferers.sliding_window_inference``: MONAI places windows with ``scan_interval = roi * (1 -
overlap)`` from 0 and clamps the last one, pads asymmetrically to the end, and builds its Gaussian with
``sigma_scale * roi`` from a differently normalised kernel; the official window positions (evenly spread,
rounded), centred padding, the per-window softmax/mirroring and the exact Gaussian cannot be obtained from it,
so the reference fixture (``tiny_sliding_window_io.npz``) would not be reproduced. This implementation keeps
MONAI's argument names (``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``, ``sigma_scale``, ``progress``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .config import UniSegConfig
from .model import UNISEG_FAMILY
from .perf import optimize_for_inference, try_compile
from .preprocessing import LoadedImage, labels_to_nifti, load_image, preprocess, restore_labels
from .weights.loader import load_pretrained

__all__ = [
    "compute_steps",
    "gaussian_importance_map",
    "sliding_window_inference",
    "InferenceMemoryError",
    "combined_label_offsets",
    "tasks_for_all",
    "check_input",
    "Prediction",
    "UniSegPredictor",
]

logger = logging.getLogger(__name__)


class InferenceMemoryError(ValueError):
    """The volume needs more memory than the limit allows (a ``ValueError`` so the CLI reports it in one line)."""


# ---------------------------------------------------------------------------------------------------------------
# Sliding window (nnU-Net v1 semantics)
# ---------------------------------------------------------------------------------------------------------------
def compute_steps(image_size: Sequence[int], roi_size: Sequence[int], step: float = 0.5) -> list[list[int]]:
    """Window start positions per axis (nnU-Net v1 ``_compute_steps_for_sliding_window``).

    ``num_steps = ceil((size - roi) / (roi * step)) + 1``, spread evenly over ``[0, size - roi]`` and rounded
    (half to even). ``image_size`` must be ``>= roi_size`` (pad first).

    Example:
        >>> compute_steps([72, 70], [64, 64])
        [[0, 8], [0, 6]]
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1] (overlap in [0, 1)), got step={step}")
    steps = []
    for size, roi in zip(image_size, roi_size):
        if size < roi:
            raise ValueError(f"image size {tuple(image_size)} smaller than the window {tuple(roi_size)}: pad first")
        n = int(np.ceil((size - roi) / (roi * step))) + 1
        actual = (size - roi) / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(n)])
    return steps


def gaussian_importance_map(
    roi_size: Sequence[int],
    sigma_scale: float = 1.0 / 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """nnU-Net v1 ``_get_gaussian``: ``gaussian_filter`` of a delta at ``roi // 2`` (``mode='constant'``,
    ``truncate=4``), divided by its max, float32, zeros replaced by the smallest nonzero value.

    Built separably from scipy's 1D kernel (``exp(-x^2 / 2 sigma^2)`` normalised over ``|x| <= int(4 sigma + 0.5)``),
    so no scipy is needed. Returns ``roi_size``-shaped ``dtype`` tensor with max 1.
    """
    g = torch.ones((), dtype=torch.float64)
    for size in roi_size:
        sigma = size * sigma_scale
        radius = int(4.0 * sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 / sigma**2 * x**2)
        kernel = kernel / kernel.sum()
        line = torch.zeros(size, dtype=torch.float64)
        pos = torch.arange(size) - size // 2
        inside = pos.abs() <= radius
        line[inside] = kernel[pos[inside] + radius]
        g = g[..., None] * line
    g = (g / g.max()).float()
    if (g == 0).any():
        g[g == 0] = g[g != 0].min()
    return g.to(device=device, dtype=dtype)


def _pad_to_roi(x: torch.Tensor, roi: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad ``(C, *S)`` so every axis is at least ``roi`` (nnU-Net ``pad_nd_image``: ``diff // 2`` before)."""
    diff = [max(r - s, 0) for r, s in zip(roi, x.shape[1:])]
    if not any(diff):
        return x, tuple(slice(0, s) for s in x.shape[1:])
    pad = []
    for d in reversed(diff):
        pad += [d // 2, d - d // 2]
    out = torch.nn.functional.pad(x, pad)
    return out, tuple(slice(d // 2, d // 2 + s) for d, s in zip(diff, x.shape[1:]))


def _memory_limit_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1] * 0.9)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.8)
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def _check_memory(
    padded: Sequence[int], channels: int, classes: int, roi: Sequence[int], sw_batch_size: int,
    width: int, device: torch.device, memory_limit_gb: float | None,
) -> None:
    """Raise :class:`InferenceMemoryError` when the rough peak estimate exceeds the limit.

    Estimate (float32): input + ``classes`` probability buffers + weights over the padded volume, plus
    ``sw_batch_size`` windows of ``(channels + 2 * classes + 6 * width)`` activations per voxel.
    """
    vox, win = math.prod(padded), math.prod(roi)
    buffers = 4 * vox * (channels + classes + 1)
    windows = 4 * sw_batch_size * win * (channels + 2 * classes + 6 * width)
    limit = _memory_limit_bytes(device) if memory_limit_gb is None else int(memory_limit_gb * (1 << 30))
    if buffers + windows > limit:
        gib = 1 << 30
        raise InferenceMemoryError(
            f"volume {tuple(padded)} needs about {(buffers + windows) / gib:.2f} GiB on {device} "
            f"({buffers / gib:.2f} GiB for {classes} class buffers, {windows / gib:.2f} GiB for sw_batch_size="
            f"{sw_batch_size} windows of {tuple(roi)}), more than the limit of {limit / gib:.2f} GiB: lower "
            "sw_batch_size (--sw-batch-size 1), resample to a coarser spacing (--spacing) or crop the scan, or "
            "raise memory_limit_gb (--memory-limit-gb)"
        )


def _call(model: Callable, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
    out = model(x) if task_id is None else model(x, torch.full((x.shape[0],), task_id, dtype=torch.long, device=x.device))
    return out[0] if isinstance(out, (list, tuple)) else out


_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _autocast(device: torch.device, amp_dtype: torch.dtype | str | None):
    """``torch.autocast`` for ``amp_dtype`` (``None``/``"fp32"``: a no-op context)."""
    if amp_dtype is None or amp_dtype in ("fp32", "float32", torch.float32):
        return contextlib.nullcontext()
    dtype = _AMP_DTYPES.get(amp_dtype, amp_dtype) if isinstance(amp_dtype, str) else amp_dtype
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be 'bf16', 'fp16', torch.bfloat16, torch.float16 or None, got {amp_dtype!r}")
    return torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int,
    predictor: Callable[..., torch.Tensor],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sigma_scale: float = 1.0 / 8,
    progress: bool = False,
    task_id: int | None = None,
    mirror_axes: Sequence[int] = (),
    apply_softmax: bool = True,
    device: str | torch.device | None = None,
    memory_limit_gb: float | None = None,
    importance_map: torch.Tensor | None = None,
    amp_dtype: torch.dtype | str | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Whole-volume class probabilities from a network that takes fixed-size windows (official ``predict_3D``).

    Args:
        inputs: ``(C, D, H, W)`` or ``(1, C, D, H, W)`` volume (any size; smaller axes are zero-padded).
        roi_size: window ``(d, h, w)``, the training patch size.
        sw_batch_size: windows (times mirror flips) per forward pass.
        predictor: ``predictor(x)`` or, with ``task_id``, ``predictor(x, task_ids)`` → logits ``(B, K, *roi)``
            (a list/tuple output, e.g. deep supervision, uses its first element).
        overlap: fraction two neighbouring windows share; nnU-Net's ``step_size = 1 - overlap`` (default 0.5).
        mode: ``"gaussian"`` (importance weighting, used when there is more than one window, as nnU-Net does)
            or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of ``roi_size`` (nnU-Net: 1/8).
        progress: show a tqdm bar over window passes.
        task_id: task passed to a UniSeg-style predictor (``None`` for a plain backbone).
        mirror_axes: spatial axes (0=D, 1=H, 2=W) to test-time mirror; every flip combination is predicted and
            the softmax outputs averaged (the official default is ``(0, 1, 2)``: 8 passes per window).
        apply_softmax: softmax each window's logits before aggregation (official); ``False`` aggregates logits.
        device: where to run and accumulate (default: the predictor's parameters' device, else the input's).
        memory_limit_gb: raise :class:`InferenceMemoryError` when the rough estimate exceeds it (default: 90 %
            of the GPU's memory, 80 % of RAM on CPU).
        importance_map: a precomputed ``roi_size`` weight map to reuse across calls.
        amp_dtype: run the network under ``torch.autocast(device.type, amp_dtype)`` (``"bf16"``/``"fp16"`` or a
            dtype; meant for CUDA). Softmax, mirroring and aggregation stay float32. ``None``: float32 throughout.
        channels_last: feed each window batch in ``torch.channels_last_3d`` memory format (convert the network
            with ``model.to(memory_format=torch.channels_last_3d)`` too).

    Windows and their mirror flips are batched ``sw_batch_size`` at a time into one forward; each window's flips
    are averaged before its single Gaussian-weighted add into the ``(K, D, H, W)`` buffer, which stays on
    ``device`` (no per-window host copies). Results equal the one-window-one-flip-per-forward loop of nnU-Net v1
    (tested to 1e-5 in ``tests/test_predict_perf.py``; ``benchmarks/predict.py`` measures the speed).

    Returns:
        ``(1, K, D, H, W)`` float32 probabilities on ``device`` (``(K, D, H, W)`` for a 4D input).
    """
    squeeze = inputs.dim() == 4
    if squeeze:
        inputs = inputs[None]
    if inputs.dim() != 5 or inputs.shape[0] != 1:
        raise ValueError(f"inputs must be (C, D, H, W) or (1, C, D, H, W), got shape {tuple(inputs.shape)}")
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    roi = [int(r) for r in roi_size]
    if device is None:
        p = next(iter(predictor.parameters()), None) if isinstance(predictor, nn.Module) else None
        device = p.device if p is not None else inputs.device
    device = torch.device(device)
    x, crop = _pad_to_roi(inputs[0].to(device=device, dtype=torch.float32), roi)
    steps = compute_steps(x.shape[1:], roi, 1.0 - overlap)
    windows = [tuple(slice(s, s + r) for s, r in zip(start, roi)) for start in product(*steps)]
    flips = [tuple(a + 1 for a, on in zip(range(3), combo) if on) for combo in product(*[(False, True) if a in mirror_axes else (False,) for a in range(3)])]

    # first pass: learn the class count from the network
    jobs = [(w, f) for w in windows for f in flips]
    net_config = getattr(predictor, "config", None)
    width = getattr(net_config, "base_num_features", 32)
    if isinstance(getattr(net_config, "num_classes", None), int):  # fail before any work when the size is known
        _check_memory(x.shape[1:], x.shape[0], net_config.num_classes, roi, sw_batch_size, width, device, memory_limit_gb)
    aggregated = weights = None
    if importance_map is None:
        use_gauss = mode == "gaussian" and len(windows) > 1
        importance_map = gaussian_importance_map(roi, sigma_scale, device) if use_gauss else torch.ones(roi, device=device)
    importance_map = importance_map.to(device=device, dtype=torch.float32)
    scale = 1.0 / len(flips)
    autocast = _autocast(device, amp_dtype)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="sliding window", unit="pass", leave=False)
    try:
        for b in range(0, len(jobs), sw_batch_size):
            batch = jobs[b : b + sw_batch_size]
            xb = torch.stack([x[(slice(None),) + w].flip(f) if f else x[(slice(None),) + w] for w, f in batch])
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last_3d)
            with autocast:
                logits = _call(predictor, xb, task_id)
            logits = logits.float()
            pred = torch.softmax(logits, dim=1) if apply_softmax else logits
            if aggregated is None:
                classes = pred.shape[1]
                _check_memory(x.shape[1:], x.shape[0], classes, roi, sw_batch_size, width, device, memory_limit_gb)
                aggregated = torch.zeros((classes, *x.shape[1:]), device=device)
                weights = torch.zeros(x.shape[1:], device=device)
                for w in windows:
                    weights[w] += importance_map
            # average the flips of each window present in this batch, then one weighted add per window
            i = 0
            while i < len(batch):
                w = batch[i][0]
                acc = None
                while i < len(batch) and batch[i][0] == w:
                    f = batch[i][1]
                    p = pred[i].flip(f) if f else pred[i]
                    if acc is None:
                        acc = p if scale == 1.0 else p * scale
                    else:
                        acc.add_(p, alpha=scale)
                    i += 1
                aggregated[(slice(None),) + w].addcmul_(acc, importance_map)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    assert aggregated is not None and weights is not None
    out = (aggregated / weights)[(slice(None),) + crop]
    return out if squeeze else out[None]


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


def check_input(
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


# ---------------------------------------------------------------------------------------------------------------
# Scan-level predictor
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """Result of :meth:`UniSegPredictor.predict`.

    Attributes:
        labels: ``(Z, Y, X)`` uint8 label map on the input's voxel grid (nnU-Net order; ``.image`` is file order).
        image: the label map as a NIfTI image with the input's affine.
        tasks: task ids run (``[None]`` for a prompt-free backbone); ``probabilities``: task name → ``(K, Z, Y, X)``
            float16 (when requested).
        warnings: messages from :func:`check_input`.
    """

    labels: np.ndarray
    image: Any
    tasks: list[int | None]
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class UniSegPredictor:
    """Segment scans with a UniSeg network (or any ``model(x, task_id)`` / ``model(x)`` module with a config).

    Args:
        model: the network; ``model.config`` (a :class:`UniSegConfig`) gives patch size, tasks and the
            preprocessing contract unless ``config`` is passed.
        config: overrides ``model.config``.
        device: where to run (default: the model's device).
        sw_batch_size: windows (times mirror flips) per forward pass; default 1 on CPU (batching measured slower
            there: 76 s vs 61 s for a CT-sized volume, and +2.2 GiB peak) and 2 on CUDA.
        overlap: window overlap (official ``step_size`` 0.5 ⇔ ``overlap=0.5``).
        mirror: test-time mirroring on all three axes (official default: on).
        spacing: target spacing override ``(z, y, x)`` (default ``config.preprocessing.spacing``).
        progress: tqdm bar over windows.
        memory_limit_gb: see :func:`sliding_window_inference`.
        mirror_axes: axes to mirror when ``mirror`` (default: ``config.mirror_axes``, the axes the weights were trained
            mirrored along — all three for the upstream weights, 8 passes per window; ``(2,)`` is a documented fast
            mode, see ``benchmarks/README.md``).
        amp: ``"bf16"`` or ``"fp16"`` autocast for the network (meant for CUDA; an approximate mode: the
            probabilities differ from float32 by the half-precision rounding), ``None`` for float32.
        channels_last: convert the network and windows to ``torch.channels_last_3d``.
        optimize: rewrite the network **in place** with :func:`uniseg_hub.perf.optimize_for_inference` (group-norm
            instance norm, fused upsample+concat, matmul heads; state-dict keys unchanged, outputs within ~1e-5):
            1.27-1.33x the official loop on CPU at full size (``benchmarks/README.md``).
        compile: compile the network **in place** with :func:`uniseg_hub.perf.try_compile` (one graph, inductor
            freezing; opt-in; falls back to eager, with a warning in the log, if compilation fails). The first
            window pays the compile time (about 15-25 s on 2 CPU cores); with ``optimize`` the fastest CPU setting
            measured (1.44-1.61x the official loop, lower peak memory).

    Example:
        >>> predictor = UniSegPredictor(model, mirror=False)
        >>> result = predictor.predict(["ct.nii.gz"], task="liver")   # doctest: +SKIP
        >>> nib.save(result.image, "ct_liver.nii.gz")                  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        config: UniSegConfig | None = None,
        device: str | torch.device | None = None,
        sw_batch_size: int | None = None,
        overlap: float = 0.5,
        mirror: bool = True,
        spacing: Sequence[float] | None = None,
        progress: bool = False,
        memory_limit_gb: float | None = None,
        mirror_axes: Sequence[int] | None = None,
        amp: str | None = None,
        channels_last: bool = False,
        optimize: bool = False,
        compile: bool = False,
    ) -> None:
        self.config = config if config is not None else getattr(model, "config", None)
        if not isinstance(self.config, UniSegConfig):
            raise TypeError("UniSegPredictor needs a UniSegConfig: pass config= or a model with a .config attribute")
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if optimize:
            optimize_for_inference(self.model)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        if sw_batch_size is None:
            sw_batch_size = 1 if self.device.type == "cpu" else 2
        self.sw_batch_size, self.overlap, self.mirror = sw_batch_size, overlap, mirror
        if mirror_axes is None:
            mirror_axes = self.config.mirror_axes
        if any(a not in (0, 1, 2) for a in mirror_axes):
            raise ValueError(f"mirror_axes must be spatial axes among (0, 1, 2), got {tuple(mirror_axes)}")
        self.mirror_axes = tuple(sorted(set(int(a) for a in mirror_axes)))
        _autocast(self.device, amp)  # validate early
        self.amp, self.channels_last = amp, channels_last
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.progress, self.memory_limit_gb = progress, memory_limit_gb
        self._gaussian = gaussian_importance_map(self.config.patch_size, device=self.device)
        self._takes_task = self.config.num_tasks > 0 and self._accepts_task(model)
        if compile:
            try_compile(self.model, freeze=True, dynamic=False)

    @staticmethod
    def _accepts_task(model: nn.Module) -> bool:
        try:
            params = [p for p in inspect.signature(model.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
        except (TypeError, ValueError):
            return True
        return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "UniSegPredictor":
        """Build from weights: a registry name, a ``save_pretrained`` folder or an official ``.model`` file."""
        return cls(load_pretrained(name_or_path, family=UNISEG_FAMILY), **kwargs)

    # -- helpers ----------------------------------------------------------------------------------------------
    def resolve_tasks(self, task: int | str | None, channels: int, modality: str | None = None) -> list[int | None]:
        """Task ids to run for ``task`` (an id, a name, ``"all"``, or ``None`` for a backbone's only task / the
        model's default task) on a ``channels``-channel scan; ``[None]`` for a prompt-free backbone."""
        if isinstance(task, str) and task.lower() == "all":
            if self.config.is_backbone:
                raise ValueError("task 'all' merges the tasks of a prompt model; this prompt-free backbone has one task: omit --task")
            return tasks_for_all(self.config, channels, modality)
        tid = self.config.resolve_task(task)
        spec = self.config.task_spec(tid)
        if spec is not None and "unknown" not in spec.modalities and len(spec.modalities) != channels:
            what = f"task {spec.name!r}" if tid is not None else f"this model ({spec.name})"
            raise ValueError(f"{what} takes {len(spec.modalities)} input file(s) ({', '.join(spec.modalities)}), got {channels}")
        if spec is None and channels not in self.config.input_channels:
            raise ValueError(f"this model has stems for {self.config.input_channels} input channel(s), got {channels} input file(s)")
        return [tid]

    def _modalities(self, tid: int | None, channels: int) -> list[str]:
        """The modality of each channel: the task's, else the contract's only modality, else CT."""
        spec = self.config.task_spec(tid)
        if spec is not None and "unknown" not in spec.modalities:
            return list(spec.modalities)
        known = list(self.config.preprocessing.normalization)
        return [known[0] if len(known) == 1 else "CT"] * channels

    def check_input(self, image: LoadedImage | np.ndarray | torch.Tensor, task: int | str | None, spacing: Sequence[float] | None = None) -> list[str]:
        """:func:`check_input` with this predictor's config (``image`` may be a :class:`LoadedImage`)."""
        if isinstance(image, LoadedImage):
            image, spacing = image.array, image.spacing
        return check_input(self.config, image, spacing, task)

    def predict_preprocessed(self, data: torch.Tensor, task_id: int | None) -> torch.Tensor:
        """Softmax ``(K, D, H, W)`` of a preprocessed ``(C, D, H, W)`` volume (all K network outputs)."""
        return sliding_window_inference(
            data, self.config.patch_size, self.sw_batch_size, self.model, overlap=self.overlap,
            progress=self.progress, task_id=task_id if self._takes_task else None,
            mirror_axes=self.mirror_axes if self.mirror else (), device=self.device,
            memory_limit_gb=self.memory_limit_gb, importance_map=self._gaussian, amp_dtype=self.amp,
            channels_last=self.channels_last,
        )

    # -- main entry -------------------------------------------------------------------------------------------
    def predict(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike] | LoadedImage,
        task: int | str | None = None,
        modality: str | None = None,
        save_probabilities: bool = False,
    ) -> Prediction:
        """Segment one scan given as one file (or DICOM folder) per channel.

        ``task``: a task id or name of a prompt model, ``"all"``, or ``None`` — a prompt-free backbone's only task
        (a backbone given a task is an error that says why) or the model's default task (e.g. the new task of a
        ``keep-prompt`` fine-tune). For one task the label values are the task's own (``TaskSpec.label_values``:
        a fine-tuned model writes its data set's values), after class restriction and argmax, as the official
        predictor does since 2023-07-19. For ``task="all"`` every task of the modality runs and the results merge
        into the combined label map (:func:`combined_label_offsets`), later tasks overwriting earlier ones,
        per-task labels taken from the argmax over all network outputs — exactly the official ``-task_id -1``.
        """
        image = inputs if isinstance(inputs, LoadedImage) else load_image(inputs)
        task_ids = self.resolve_tasks(task, image.array.shape[0], modality)
        warns = [m for t in task_ids[:1] for m in self.check_input(image, t)]
        tasks = self.config.tasks
        mods = self._modalities(task_ids[0], image.array.shape[0])
        pre = preprocess(image, mods, self.config.preprocessing, spacing=self.spacing, device=self.device)
        probs_out: dict[str, np.ndarray] = {}
        if not (isinstance(task, str) and task.lower() == "all"):
            tid = task_ids[0]
            probs = self.predict_preprocessed(pre.data, tid)
            spec = self.config.task_spec(tid)
            k = self.config.task_num_classes(tid) if spec is not None or tid is not None else probs.shape[0]
            values = spec.label_values if spec is not None else None
            labels, full = restore_labels(probs[:k], pre, labels=values, return_scores=save_probabilities)
            if full is not None:
                probs_out[spec.name if spec is not None else str(tid)] = full
        else:
            offsets = combined_label_offsets(self.config)
            merged = torch.zeros(pre.data.shape[1:], dtype=torch.uint8, device=self.device)
            for tid in task_ids:
                probs = self.predict_preprocessed(pre.data, tid)
                arg = probs.argmax(0)
                for c in range(1, tasks[tid].num_classes):
                    merged[arg == c] = offsets[tid] + c - 1
                if save_probabilities:
                    probs_out[tasks[tid].name] = restore_labels(probs[: tasks[tid].num_classes], pre, return_scores=True)[1]
            present = [int(v) for v in torch.unique(merged).tolist()]
            if 0 not in present:
                present = [0] + present
            onehot = torch.stack([(merged == v).float() for v in present])
            labels, _ = restore_labels(onehot, pre, labels=present)
        return Prediction(labels=labels, image=labels_to_nifti(labels, pre), tasks=task_ids, probabilities=probs_out, warnings=warns)

    def predict_file(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike] | LoadedImage,
        output: str | os.PathLike,
        task: int | str | None = None,
        modality: str | None = None,
        save_probabilities: bool = False,
    ) -> Prediction:
        """:meth:`predict` and write ``output`` (NIfTI, input geometry); probabilities go to ``OUTPUT.npz``
        (per task, ``(K, X, Y, Z)`` float16 in the file's voxel order) when requested."""
        import nibabel as nib

        out = Path(output)
        if not out.name.endswith((".nii", ".nii.gz")):
            raise ValueError(f"output must be a .nii or .nii.gz path, got {str(out)!r}")
        result = self.predict(inputs, task=task, modality=modality, save_probabilities=save_probabilities)
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.save(result.image, str(out))
        if save_probabilities:
            base = out.name[: -len(".nii.gz")] if out.name.endswith(".nii.gz") else out.name[: -len(".nii")]
            npz = out.with_name(base + ".npz")
            np.savez_compressed(npz, **{k: v.transpose(0, 3, 2, 1) for k, v in result.probabilities.items()})
        return result
