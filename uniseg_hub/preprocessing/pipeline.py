"""The one preprocessing path of training, validation and prediction, and the way back to the input grid.

:func:`preprocess` is what the predictor runs on a scan and what :func:`preprocess_case` runs on a training case
(nnU-Net v1 ``GenericPreprocessor`` semantics, ``DoDNetPreprocessor`` for the upstream contract):

1. crop to the bounding box of the nonzero region (label map cropped with the same box);
2. resample the images to the target spacing (cubic B-spline in float64; anisotropic data: in-plane cubic, the
   low-resolution axis nearest neighbour);
3. resample the nonzero region alone, as the label map {-1 = outside, 0 = inside}, with :func:`resample_labels`:
   the normalisation mask. This is nnU-Net v1's *prediction-path* mask (``preprocess_test_case``). Its training
   path instead resamples the label map with ``-1`` already written outside the region and reads the mask from
   that, which can differ at mask-boundary voxels; computing it the same way with and without a label makes the
   training arrays and the prediction inputs of one case identical;
4. resample the label map with :func:`resample_labels` and set it to ``-1`` where it is background outside the
   mask (nnU-Net v1's ``crop_to_nonzero``: ``seg[(seg == 0) & ~nonzero_mask] = -1``; foreground outside the
   region keeps its label);
5. normalise each channel by its modality, with the mask.

:func:`restore_labels` maps network scores back: order-1 resize to the cropped size (order 0 along the
low-resolution axis), argmax, placed into the crop box.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

from ..config import PreprocessingConfig, TaskSpec
from ..data.case import Case
from ..data.raw import RawCase
from ..resources import check_memory
from .crop import bbox_of, nonzero_mask
from .io import LoadedImage, load_image, load_label
from .normalize import normalize
from .resample import resample_labels, resample_volume, separate_z_axis, target_shape

__all__ = ["Preprocessed", "preprocess", "restore_labels", "labels_to_nifti", "preprocess_case", "load_cases"]

_log = logging.getLogger(__name__)

#: label value of voxels outside the nonzero region (nnU-Net's ``nonzero_label``); background for training.
OUTSIDE = -1


@dataclass
class Preprocessed:
    """The network input and everything needed to map a prediction back onto the input grid.

    Attributes:
        data: ``(C, D, H, W)`` float32 tensor at the target spacing.
        spacing: input spacing ``(z, y, x)``; ``target_spacing``: the network's.
        original_shape: input ``(Z, Y, X)``; ``bbox``: crop box in it; ``cropped_shape``: the box's shape.
        affine: the input file's voxel → world matrix, for writing the result.
        mask: ``(D, H, W)`` bool, the nonzero region resampled to the network grid (the normalisation mask).
        header: the input file's NIfTI header (``None`` for DICOM).
        label: ``(D, H, W)`` int16 label values on the network grid, ``-1`` for background outside the nonzero
            region, when a label map was given; else ``None``.
    """

    data: torch.Tensor
    spacing: tuple[float, ...]
    target_spacing: tuple[float, ...]
    original_shape: tuple[int, ...]
    bbox: list[list[int]]
    cropped_shape: tuple[int, ...]
    affine: np.ndarray
    mask: torch.Tensor
    header: Any = None
    label: np.ndarray | None = None


def check_spacing(spacing: Sequence[float], what: str) -> tuple[float, float, float]:
    """``spacing`` as three floats, or a ``ValueError`` naming ``what`` unless they are finite and in [0.001, 100] mm."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be three numbers (z, y, x) in mm, got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(s) and 1e-3 <= s <= 100 for s in values):
        raise ValueError(f"{what} must be three finite voxel sizes (z, y, x) between 0.001 and 100 mm, got "
                         f"{tuple(spacing)}" + (" (a broken header? pass the spacing explicitly)" if "spacing of" in what else ""))
    return values  # type: ignore[return-value]


def _check_resampling_memory(shape: Sequence[int], new_shape: Sequence[int], channels: int, device: torch.device,
                             limit_gb: float | None, target: Sequence[float]) -> None:
    """Refuse before allocating: float64 cubic resampling holds the input, the output and one intermediate per
    channel, plus int16 masks and the float32 result (a rough upper estimate)."""
    vin, vout = math.prod(shape), math.prod(new_shape)
    needed = 8 * channels * (vin + 2 * vout) + 4 * channels * vout + 6 * vout
    check_memory(needed, f"resampling {tuple(shape)} to {tuple(new_shape)} voxels at {tuple(target)} mm", device,
                 limit_gb, "choose a coarser target spacing (--spacing), crop the scan, or raise the memory limit "
                 "(--memory-limit-gb)")


def preprocess(
    image: LoadedImage,
    modalities: Sequence[str],
    config: PreprocessingConfig,
    *,
    label: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    memory_limit_gb: float | None = None,
) -> Preprocessed:
    """Crop, resample and normalise a loaded scan (and its label map) as nnU-Net v1 does (module docstring).

    Args:
        image: from :func:`~uniseg_hub.preprocessing.load_image`, ``(C, Z, Y, X)``.
        modalities: one modality name per channel (the task's ``TaskSpec.modalities``).
        config: the preprocessing contract (the weights' or the data set's plan).
        label: ``(Z, Y, X)`` integer label values on the image grid (:func:`~uniseg_hub.preprocessing.load_label`),
            values ``>= 0`` (``-1`` is reserved for "outside").
        spacing: target spacing ``(z, y, x)`` overriding ``config.spacing`` (e.g. coarser for speed).
        device: where to resample (a GPU makes the cubic resize of large CTs fast).
        memory_limit_gb: refuse (:class:`~uniseg_hub.resources.MemoryEstimateError`) before resampling when the
            estimated peak exceeds this (default: 80% of physical memory, 90% of a GPU's).

    Spacings (the image's and the target) must be three finite numbers in [0.001, 100] mm.

    The image arrays do not depend on ``label``: ``preprocess(image, ...).data`` is bitwise the ``data`` of the
    same call with a label.
    """
    if config.orientation is not None:
        raise NotImplementedError(
            f"preprocessing.orientation={config.orientation!r}: only None (keep the file's voxel order, as the "
            "official nnU-Net v1 pipeline does) is supported"
        )
    grid = tuple(image.array.shape[1:])
    if label is not None:
        label = np.asarray(label)
        if tuple(label.shape) != grid:
            raise ValueError(f"label map of shape {tuple(label.shape)} does not match the image grid {grid} (Z, Y, X)")
        if label.dtype.kind not in "iu":
            raise ValueError(f"label map must hold integer values, got dtype {label.dtype}")
        if label.size and int(label.min()) < 0:
            raise ValueError(f"label map holds negative values (min {int(label.min())}): -1 is reserved for outside the nonzero region")
    check_spacing(image.spacing, f"the spacing of {image.paths[0] if image.paths else 'the image'!r}")
    target = check_spacing(spacing if spacing is not None else config.spacing, "the target spacing")
    region = nonzero_mask(image.array)
    bbox = bbox_of(region)
    box = tuple(slice(a, b) for a, b in bbox)
    cropped = np.ascontiguousarray(image.array[(slice(None),) + box])
    cropped_shape = tuple(cropped.shape[1:])
    new_shape = target_shape(cropped_shape, image.spacing, target)
    if min(new_shape) < 1:
        raise ValueError(f"target spacing {target} leaves an empty volume for input shape {cropped_shape}")
    _check_resampling_memory(cropped_shape, new_shape, cropped.shape[0], torch.device(device), memory_limit_gb, target)
    axis = separate_z_axis(image.spacing, target)
    data = torch.as_tensor(cropped, device=device).double()
    data = resample_volume(data, new_shape, order=3, separate_axis=axis, order_z=0).float()
    inside = torch.as_tensor(np.where(region[box], 0, OUTSIDE).astype(np.int16), device=device)
    mask = resample_labels(inside, new_shape, axis) >= 0
    out_label = None
    if label is not None:
        lab = resample_labels(torch.as_tensor(label[box].astype(np.int16), device=device), new_shape, axis)
        lab[(lab == 0) & ~mask] = OUTSIDE
        out_label = lab.cpu().numpy()
    data = normalize(data, modalities, config, mask=mask)
    return Preprocessed(
        data=data,
        spacing=tuple(image.spacing),
        target_spacing=target,
        original_shape=grid,
        bbox=bbox,
        cropped_shape=cropped_shape,
        affine=image.affine,
        mask=mask,
        header=image.header,
        label=out_label,
    )


def preprocess_case(
    raw: RawCase, config: PreprocessingConfig, task: TaskSpec, task_id: int | None = None, device: str | torch.device = "cpu"
) -> Case:
    """Read, preprocess (:func:`preprocess`) and label-encode one case for training or validation.

    Label values become class indices: class ``c`` is the position of the value in ``task.label_values``
    (``[0, *sorted label values]``), so the values ``{0, 1, 3}`` of a data set with labels ``{"1", "3"}`` become
    ``{0, 1, 2}``; ``-1`` (background outside the nonzero region) stays ``-1``.

    Returns:
        a :class:`Case` with ``image`` ``(C, D, H, W)`` float32 (bitwise the predictor's input for these files),
        ``label`` ``(D, H, W)`` int16 class indices (or ``None``), ``spacing`` the target spacing and ``meta``
        holding ``images`` (list of str) and ``label`` (str or ``None``) — the raw files, so a final validation can
        rerun the predictor on them — ``spacing`` / ``original_shape`` (``(z, y, x)`` of the raw files), ``bbox``,
        ``cropped_shape`` and ``label_values``.

    Raises:
        ValueError: a label value not in the task (e.g. 7 when the labels are 0..4, or a negative value), naming
            the case, the values found and the expected ones; a channel count other than the task's.
    """
    image = load_image(raw.images)
    if image.array.shape[0] != len(task.modalities):
        raise ValueError(
            f"case {raw.name!r} has {image.array.shape[0]} image channel(s) but task {task.name!r} has "
            f"{len(task.modalities)} modalities {task.modalities}"
        )
    label = None
    values = task.label_values
    if raw.label is not None:
        label = load_label(raw.label, image)
        found = np.unique(label).tolist()
        unknown = sorted(set(found) - set(values))
        if unknown:
            raise ValueError(
                f"case {raw.name!r}: label map {str(raw.label)!r} holds value(s) {unknown} that are not labels of task "
                f"{task.name!r}: found {found}, expected a subset of {values} (dataset.json 'labels')"
            )
    pre = preprocess(image, task.modalities, config, label=label, device=device)
    classes = None
    if pre.label is not None:
        lut = np.full(max(values) + 2, OUTSIDE, dtype=np.int16)  # index -1 (the last entry) maps -1 to -1
        lut[values] = np.arange(len(values), dtype=np.int16)
        classes = lut[pre.label]
    meta = {
        "images": [str(p) for p in raw.images],
        "label": str(raw.label) if raw.label is not None else None,
        "spacing": [float(s) for s in pre.spacing],
        "original_shape": list(pre.original_shape),
        "bbox": pre.bbox,
        "cropped_shape": list(pre.cropped_shape),
        "label_values": list(values),
    }
    return Case(raw.name, pre.data.cpu().numpy(), classes, tuple(pre.target_spacing), task_id=task_id, meta=meta)


def load_cases(
    raw_cases: Sequence[RawCase], config: PreprocessingConfig, task: TaskSpec, task_id: int | None = None, device: str | torch.device = "cpu"
) -> list[Case]:
    """:func:`preprocess_case` over a list, logging progress."""
    out = []
    for i, raw in enumerate(raw_cases):
        out.append(preprocess_case(raw, config, task, task_id, device))
        _log.info("preprocessed %s (%d/%d): %s", raw.name, i + 1, len(raw_cases), tuple(out[-1].image.shape))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Back to the input grid
# ---------------------------------------------------------------------------------------------------------------
def _resample_back(channel: torch.Tensor, pre: Preprocessed) -> torch.Tensor:
    """One ``(D, H, W)`` channel at network resolution → the cropped input grid (order 1, z order 0)."""
    axis = separate_z_axis(pre.spacing, pre.target_spacing)
    return resample_volume(channel[None], pre.cropped_shape, order=1, separate_axis=axis, order_z=0)[0]


def restore_labels(
    scores: torch.Tensor,
    pre: Preprocessed,
    labels: Sequence[int] | None = None,
    return_scores: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Map per-class scores at network resolution back to the input grid and take the argmax.

    What nnU-Net v1 ``save_segmentation_nifti_from_softmax`` does: resize each channel to the cropped input
    shape (order 1; order 0 along an anisotropic axis), argmax (first maximum wins), label outside the crop box 0.
    Channels are processed one at a time (running argmax), so memory stays at a few input-sized arrays.

    Args:
        scores: ``(K, D, H, W)`` probabilities (or a one-hot map) at network resolution.
        pre: the :class:`Preprocessed` the prediction was made from.
        labels: label value of each channel (default ``0..K-1``).
        return_scores: also return the resized scores, ``(K, Z, Y, X)`` float16 on the full input grid
            (background 1 outside the crop box).

    Returns:
        ``(labels (Z, Y, X) uint8, scores or None)``.
    """
    labels = list(range(scores.shape[0])) if labels is None else list(labels)
    if len(labels) != scores.shape[0] or max(labels) > 255:
        raise ValueError(f"need one label (<= 255) per score channel: {len(labels)} labels for {scores.shape[0]} channels")
    best = best_label = None
    full = None
    if return_scores:
        full = np.zeros((scores.shape[0], *pre.original_shape), dtype=np.float16)
        full[0] = 1
    sl = tuple(slice(a, b) for a, b in pre.bbox)
    for k in range(scores.shape[0]):
        ch = _resample_back(scores[k], pre)
        if full is not None:
            full[(k,) + sl] = ch.cpu().numpy()
        if best is None:
            best, best_label = ch, torch.full_like(ch, labels[k], dtype=torch.uint8)
        else:
            win = ch > best
            best = torch.where(win, ch, best)
            best_label[win] = labels[k]
    out = np.zeros(pre.original_shape, dtype=np.uint8)
    out[sl] = best_label.cpu().numpy()
    return out, full


def labels_to_nifti(labels_zyx: np.ndarray, pre: Preprocessed) -> nib.Nifti1Image:
    """A uint8 NIfTI of ``labels_zyx`` on the input's voxel grid, with the input's affine (and header)."""
    if tuple(labels_zyx.shape) != tuple(pre.original_shape):
        raise ValueError(f"label map of shape {labels_zyx.shape} does not match the input grid {pre.original_shape}")
    data = np.ascontiguousarray(labels_zyx.transpose(2, 1, 0).astype(np.uint8))
    header = pre.header.copy() if isinstance(pre.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(data, pre.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    if header is not None:  # keep the input's qform/sform codes, with our affine in both
        img.set_qform(pre.affine, code=int(header["qform_code"]) or 1)
        img.set_sform(pre.affine, code=int(header["sform_code"]) or 1)
    return img
