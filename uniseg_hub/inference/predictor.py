"""Scan-level inference: :class:`UniSegPredictor` — files in, label map out.

Preprocessing (:mod:`uniseg_hub.preprocessing`, the plan in the model's config), one task (class restriction:
keep the task's first ``num_classes`` channels, then argmax, as the official predictor does since 2023-07-19) or
task ``"all"`` (every task of the input's modality merged into the official combined label map), sliding window
(:mod:`.sliding_window`), and the result restored onto the input's voxel grid.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..config import UniSegConfig
from ..models.uniseg import UNISEG_FAMILY
from ..models.perf import is_compiled, optimize_for_inference, try_compile
from ..preprocessing.pipeline import check_spacing
from ..preprocessing import LoadedImage, labels_to_nifti, load_image, preprocess, restore_labels
from .._hugepages import huge_pages_active
from ..atomic import atomic_file
from ..resources import check_output_files, resolve_device
from ..weights.loader import load_pretrained
from .sliding_window import amp_context, compute_steps, gaussian_importance_map, sliding_window_inference
from .tasks import combined_label_offsets, contract_warnings, tasks_for_all

__all__ = ["Prediction", "UniSegPredictor", "AUTO_COMPILE_VOXEL_FORWARDS", "auto_compile_work"]

logger = logging.getLogger(__name__)

#: ``compile="auto"`` compiles when window forwards x patch voxels reach this. What compiling repays depends on the
#: CPU (``benchmarks/README.md``, full 64x192x192 patch = 2.36M voxels, 2 threads). On the AMD EPYC benchmark machine
#: of 2026-12-04 (``benchmarks/predict_vs_nnunetv2.py --size full``, huge pages on, two runs) the compiled predictor
#: saved 0.39 / 0.99 s per window forward without mirroring (8 forwards) and 0.33 / 0.75 s with W-mirroring (16)
#: against a 26-33 s cold compile: it repays after 29-95 forwards (68M-224M window-voxel forwards). On the Intel Xeon
#: (AVX-512, AMX) of 2026-11-29 the compiled forward was 5.5 s against 9.2 s (19 s compile): it repaid after 5. The
#: threshold is near the slowest measured break-even, so the rule never costs much and compiles every long job (the
#: official 8-fold mirroring from 11 full windows on; a 300x512x512 whole-body CT has 225).
AUTO_COMPILE_VOXEL_FORWARDS = 200_000_000
_HAS_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def auto_compile_work(shape: Sequence[int], patch: Sequence[int], overlap: float, mirror_axes: Sequence[int]) -> int:
    """Window-voxel forwards of one volume: windows (on the volume padded to the patch) x mirror flips x patch
    voxels, what ``compile="auto"`` compares with :data:`AUTO_COMPILE_VOXEL_FORWARDS`."""
    padded = [max(int(s), int(p)) for s, p in zip(shape, patch)]
    windows = math.prod(len(s) for s in compute_steps(padded, patch, 1.0 - overlap))
    return windows * 2 ** len(set(mirror_axes)) * math.prod(int(p) for p in patch)


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
        warnings: messages from :func:`contract_warnings`.
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
        optimize: (default on; UniSeg networks only) run a copy of the network rewritten with
            :func:`uniseg_hub.models.perf.optimize_for_inference` (group-norm instance norm, fused upsample+concat,
            matmul heads; outputs within ~1e-5, the official segmentations voxel for voxel in the tests); the
            caller's model is never modified. ``False``: the eager network itself.
        compile: ``"auto"`` (default), ``True`` or ``False``: compile the (optimized copy of the) network with
            :func:`uniseg_hub.models.perf.try_compile` (one graph, inductor freezing; falls back to eager, with a
            warning in the log, if compilation fails). ``"auto"`` compiles on the CPU, when a C++ compiler is
            present, for a job long enough to repay the compile time: at least :data:`AUTO_COMPILE_VOXEL_FORWARDS`
            window-voxels x forward passes (the first volume decides; the rule's numbers are given with that constant).

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
        optimize: bool = True,
        compile: bool | str = "auto",
    ) -> None:
        self.config = config if config is not None else getattr(model, "config", None)
        if not isinstance(self.config, UniSegConfig):
            raise TypeError("UniSegPredictor needs a UniSegConfig: pass config= or a model with a .config attribute")
        if device is not None:
            device = resolve_device(device)
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        self.device = torch.device(device)
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
        ours = callable(getattr(model, "forward_unchecked", None))  # a UniSeg network (not e.g. an ExportedModel)
        optimize, compile = optimize and ours, compile if (ours or compile is True) else False
        if optimize or compile:
            model = copy.deepcopy(model)  # the rewrites and compilation act in place: never on the caller's model
        self.model = model.to(self.device).eval()
        if optimize:
            optimize_for_inference(self.model)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        if sw_batch_size is None:
            sw_batch_size = 1 if self.device.type == "cpu" else 2
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ValueError(f"sw_batch_size (--sw-batch-size) must be an integer >= 1, got {sw_batch_size!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
            raise ValueError(f"overlap must be a number in [0, 1) (--step = 1 - overlap in (0, 1]), got {overlap!r}")
        if memory_limit_gb is not None and not (isinstance(memory_limit_gb, (int, float)) and math.isfinite(memory_limit_gb)
                                                and memory_limit_gb > 0):
            raise ValueError(f"memory_limit_gb (--memory-limit-gb) must be a finite number > 0, got {memory_limit_gb!r}")
        self.sw_batch_size, self.overlap, self.mirror = sw_batch_size, float(overlap), mirror
        if mirror_axes is None:
            mirror_axes = self.config.mirror_axes
        if any(a not in (0, 1, 2) for a in mirror_axes):
            raise ValueError(f"mirror_axes must be spatial axes among (0, 1, 2), got {tuple(mirror_axes)}")
        self.mirror_axes = tuple(sorted(set(int(a) for a in mirror_axes)))
        amp_context(self.device, amp)  # validate early
        self.amp, self.channels_last = amp, channels_last
        self.spacing = None if spacing is None else list(check_spacing(spacing, "the spacing override (--spacing)"))
        self.progress, self.memory_limit_gb = progress, memory_limit_gb
        self._gaussian = gaussian_importance_map(self.config.patch_size, device=self.device)
        self._takes_task = self.config.num_tasks > 0 and self._accepts_task(model)
        self.optimize, self.compile = bool(optimize), compile
        self.huge_pages = self.device.type == "cpu" and huge_pages_active()
        if compile is True:
            self._compile_now("compile=True")
        logger.debug("predictor path: %s", self.path)

    @property
    def path(self) -> str:
        """The speed path in use, in words (``uniseg-hub predict -v`` logs it)."""
        compiled = "compiled (inductor, frozen weights)" if is_compiled(self.model) else (
            "compile decided at the first volume (auto)" if self.compile == "auto" else "eager")
        pages = (", huge pages " + ("on" if self.huge_pages else "off (set THP_MEM_ALLOC_ENABLE=1 before torch's first "
                 "allocation, e.g. import uniseg_hub first)")) if self.device.type == "cpu" else ""
        return f"{'optimized copy' if self.optimize else 'eager network'}, {compiled}, on {self.device}{pages}"

    def _compile_now(self, why: str) -> None:
        try_compile(self.model, freeze=True, dynamic=False)
        self.compile = True
        logger.info("compiling the network (%s); the first window pays the compile time", why)

    def _maybe_auto_compile(self, shape: Sequence[int]) -> None:
        """The ``compile="auto"`` rule, applied once, at the first volume."""
        if self.compile != "auto":
            return
        work = auto_compile_work(shape, self.config.patch_size, self.overlap, self.mirror_axes if self.mirror else ())
        if self.device.type == "cpu" and _HAS_CXX and work >= AUTO_COMPILE_VOXEL_FORWARDS:
            self._compile_now(f"auto: {work // math.prod(self.config.patch_size)} window forward(s) of "
                              f"{tuple(self.config.patch_size)}")
        else:
            self.compile = False
            logger.debug("compile=auto: not compiling (%d window-voxel forwards < %d, or not a CPU with a C++ compiler)",
                         work, AUTO_COMPILE_VOXEL_FORWARDS)

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

    def contract_warnings(self, image: LoadedImage | np.ndarray | torch.Tensor, task: int | str | None, spacing: Sequence[float] | None = None) -> list[str]:
        """:func:`contract_warnings` with this predictor's config (``image`` may be a :class:`LoadedImage`)."""
        if isinstance(image, LoadedImage):
            image, spacing = image.array, image.spacing
        return contract_warnings(self.config, image, spacing, task)

    def predict_preprocessed(self, data: torch.Tensor, task_id: int | None) -> torch.Tensor:
        """Softmax ``(K, D, H, W)`` of a preprocessed ``(C, D, H, W)`` volume (all K network outputs)."""
        self._maybe_auto_compile(data.shape[1:])
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
        warns = [m for t in task_ids[:1] for m in self.contract_warnings(image, t)]
        tasks = self.config.tasks
        mods = self._modalities(task_ids[0], image.array.shape[0])
        pre = preprocess(image, mods, self.config.preprocessing, spacing=self.spacing, device=self.device,
                         memory_limit_gb=self.memory_limit_gb)
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
        overwrite: bool = False,
    ) -> Prediction:
        """:meth:`predict` and write ``output`` (NIfTI, input geometry); probabilities go to ``OUTPUT.npz``
        (per task, ``(K, X, Y, Z)`` float16 in the file's voxel order) when requested.

        The output paths are checked before the work starts (suffix, an existing file is refused unless
        ``overwrite``, the folder must be writable) and written atomically (a temporary sibling renamed into place:
        an interrupted run leaves the old file or none, never a partial one).
        """
        import nibabel as nib

        out = Path(output)
        if not out.name.endswith((".nii", ".nii.gz")):
            raise ValueError(f"output must be a .nii or .nii.gz path, got {str(out)!r}")
        base = out.name[: -len(".nii.gz")] if out.name.endswith(".nii.gz") else out.name[: -len(".nii")]
        npz = out.with_name(base + ".npz")
        check_output_files([out] + ([npz] if save_probabilities else []), overwrite=overwrite)
        result = self.predict(inputs, task=task, modality=modality, save_probabilities=save_probabilities)
        with atomic_file(out) as tmp:
            nib.save(result.image, str(tmp))
        if save_probabilities:
            with atomic_file(npz) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, **{k: v.transpose(0, 3, 2, 1) for k, v in result.probabilities.items()})
        return result
