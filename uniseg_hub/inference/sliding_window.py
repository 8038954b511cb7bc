"""Sliding-window inference equivalent to the official UniSeg/nnU-Net v1 ``predict_3D``.

:func:`sliding_window_inference` — nnU-Net v1 ``_internal_predict_3D_3Dconv_tiled`` with MONAI-style argument
names: zero-pad volumes smaller than the patch (centred), windows at ``_compute_steps_for_sliding_window``
positions, softmax per window, optional mirroring over every flip combination of ``mirror_axes`` (averaged),
Gaussian importance weighting (``sigma = roi * sigma_scale``), division by the summed weights; with a memory
check before anything is allocated (:class:`InferenceMemoryError`).

Why not ``monai.inferers.sliding_window_inference``: MONAI places windows with ``scan_interval = roi * (1 -
overlap)`` from 0 and clamps the last one, pads asymmetrically to the end, and builds its Gaussian with
``sigma_scale * roi`` from a differently normalised kernel; the official window positions (evenly spread,
rounded), centred padding, the per-window softmax/mirroring and the exact Gaussian cannot be obtained from it,
so the reference fixture (``tiny_sliding_window_io.npz``) would not be reproduced. This implementation keeps
MONAI's argument names (``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``, ``sigma_scale``, ``progress``).
"""

from __future__ import annotations

import contextlib
import math
from itertools import product
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..resources import MemoryEstimateError, check_memory


__all__ = ["compute_steps", "gaussian_importance_map", "sliding_window_inference", "InferenceMemoryError"]


class InferenceMemoryError(MemoryEstimateError):
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
    gib = 1 << 30
    check_memory(
        buffers + windows, f"volume {tuple(padded)} ({buffers / gib:.2f} GiB for {classes} class buffers, "
        f"{windows / gib:.2f} GiB for sw_batch_size={sw_batch_size} windows of {tuple(roi)})", device, memory_limit_gb,
        "lower sw_batch_size (--sw-batch-size 1), resample to a coarser spacing (--spacing) or crop the scan, or "
        "raise memory_limit_gb (--memory-limit-gb)", error=InferenceMemoryError,
    )


def _call(model: Callable, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
    out = model(x) if task_id is None else model(x, torch.full((x.shape[0],), task_id, dtype=torch.long, device=x.device))
    return out[0] if isinstance(out, (list, tuple)) else out


_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def amp_context(device: torch.device, amp_dtype: torch.dtype | str | None):
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
    autocast = amp_context(device, amp_dtype)
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
            del xb
            pred = torch.softmax(logits.float(), dim=1) if apply_softmax else logits.float()
            del logits  # each window's buffers are released before the next forward (K x window floats apiece)
            if aggregated is None:
                classes = pred.shape[1]
                _check_memory(x.shape[1:], x.shape[0], classes, roi, sw_batch_size, width, device, memory_limit_gb)
                aggregated = torch.zeros((classes, *x.shape[1:]), device=device)
                weights = torch.zeros(x.shape[1:], device=device)
                for w in windows:
                    weights[w] += importance_map
            # sum the flips of each window present in this batch, then one add of sum x Gaussian / flips per window
            i = 0
            while i < len(batch):
                w = batch[i][0]
                acc = None
                while i < len(batch) and batch[i][0] == w:
                    f = batch[i][1]
                    p = pred[i].flip(f) if f else pred[i]
                    if acc is None:
                        acc = p  # may be a view of pred[i]: summing into it is safe, pred[i] is not read again
                    else:
                        acc.add_(p)
                    del p
                    i += 1
                aggregated[(slice(None),) + w].addcmul_(acc, importance_map, value=scale)
                del acc
            del pred
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    assert aggregated is not None and weights is not None
    out = (aggregated / weights)[(slice(None),) + crop]
    return out if squeeze else out[None]
