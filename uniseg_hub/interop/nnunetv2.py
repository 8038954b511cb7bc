"""UniSeg backbones as nnU-Net v2 trained-model folders and pretrained checkpoints, run by **stock** nnunetv2.

:func:`to_nnunetv2` writes ``dataset.json``, ``plans.json`` and ``fold_0/checkpoint_final.pth``: a folder that
``nnUNetPredictor.initialize_from_trained_model_folder`` and ``nnUNetv2_predict`` load unchanged.
:func:`export_nnunetv2_pretrained` writes a checkpoint for ``nnUNetv2_train ... -pretrained_weights`` plus the plans
a user applies to their data set (``docs/interop.md``, step by step).

The network is nnU-Net v2's own ``dynamic_network_architectures.architectures.unet.PlainConvUNet`` (no custom
class), built by nnunetv2 from the plans' ``architecture`` entry. What had to be solved:

* **Decoder kernels.** PlainConvUNet's decoder stage at resolution ``l`` uses the encoder's stage-``l`` kernel
  (``encoder.kernel_sizes[-(s + 1)]`` in ``UNetDecoder``); UniSeg / nnU-Net v1 use the kernel of the stage below
  (``conv_kernel_sizes[l + 1]``). With the published 1x3x3 first stage the finest decoder stage is 1x3x3 in
  PlainConvUNet but 3x3x3 in UniSeg, and ``arch_kwargs`` has no decoder-kernel field. Routed around exactly:
  PlainConvUNet gets ``kernel_sizes[l] = max(k_l, k_{l+1})`` (element-wise; ``k_{n-1}`` for the bottleneck) and
  every smaller kernel is zero-padded to it, centred. With ``padding = (K - 1) // 2`` the extra taps read the
  same voxels (or the same zero padding) and weigh them by zero, so the outputs are the same; the cost is the
  extra multiply-adds of the widened convs (published network: the two 32-channel full-resolution encoder convs
  become 3x3x3). Fine-tuning in nnU-Net then trains the zero taps too (a superset of UniSeg's network).
* **Biases.** PlainConvUNet with ``conv_bias=True`` has a bias on every conv (copied), on the transposed convs
  and the 1x1x1 heads (``seg_layers``); UniSeg has none there, so those are set to zero — exact.
* **Heads.** ``seg_layers[u]`` are our ``decoder.heads[u]`` (coarsest first); a task that uses fewer classes than
  the heads provide keeps its first ``num_classes`` rows (our predictor's class restriction).

The plan comes from ``model.config.preprocessing``: spacing; per channel (the task's modalities) ``clip_rescale``
{low, high} → ``CTNormalization`` with ``mean = percentile_00_5 = low``, ``std = high - low``,
``percentile_99_5 = high`` (clip, then ``(x - low) / (high - low)``: the same map); ``zscore`` →
``ZScoreNormalization`` (``use_mask_for_norm`` = ``use_nonzero_mask``); ``ct`` → ``CTNormalization`` with the
scheme's statistics; resampling: nnU-Net's cubic (order 3, separate low-resolution axis order 0 above anisotropy
3), as nnU-Net v1. Axes: SimpleITK order ``(z, y, x)``, no transposition, as ours.

nnunetv2 and dynamic-network-architectures are imported inside the functions that need them (the ``interop``
extra: ``pip install 'uniseg_hub[interop]'``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config import TaskSpec, UniSegConfig
from ..models.adapters import from_upstream
from ..models.uniseg import UNISEG_FAMILY, UniSeg, UniSegBackbone
from ..weights.loader import load_pretrained
from .common import BackboneLayout, check_backbone, require, resolve_in_channels, sub_state

__all__ = [
    "PLAIN_CONV_UNET",
    "Nnunetv2Export",
    "plain_conv_unet_architecture",
    "plain_conv_unet_kernels",
    "to_plain_conv_unet",
    "nnunetv2_plans",
    "nnunetv2_dataset_json",
    "to_nnunetv2",
    "export_nnunetv2_pretrained",
]

logger = logging.getLogger(__name__)

PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
_NORM_OPS = {"instance": "torch.nn.modules.instancenorm.InstanceNorm3d", "batch": "torch.nn.modules.batchnorm.BatchNorm3d"}
_NONLINS = {"leakyrelu": "torch.nn.LeakyReLU", "relu": "torch.nn.ReLU", "gelu": "torch.nn.GELU", "elu": "torch.nn.ELU"}
_DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.\-]+$")
_RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}


# ---------------------------------------------------------------------------------------------------------------
# The architecture: stock PlainConvUNet
# ---------------------------------------------------------------------------------------------------------------
def plain_conv_unet_kernels(config: UniSegConfig) -> list[list[int]]:
    """PlainConvUNet ``kernel_sizes`` that hold UniSeg exactly: ``max(k_l, k_{l+1})`` per stage (bottleneck: ``k_{n-1}``).

    Example:
        >>> plain_conv_unet_kernels(UniSegConfig.uniseg_11task())[:2]
        [[3, 3, 3], [3, 3, 3]]
    """
    k = config.conv_kernel_sizes
    return [[max(a, b) for a, b in zip(k[s], k[s + 1])] for s in range(len(k) - 1)] + [list(k[-1])]


def plain_conv_unet_architecture(config: UniSegConfig) -> dict[str, Any]:
    """The plans' ``architecture`` entry (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``)."""
    norm, act = config.norm, config.act
    if norm[0] not in _NORM_OPS:
        raise ValueError(f"norm {norm[0]!r} has no nnU-Net v2 counterpart here; supported: {sorted(_NORM_OPS)}")
    if act[0] not in _NONLINS:
        raise ValueError(f"activation {act[0]!r} has no parameter-free torch counterpart here; supported: {sorted(_NONLINS)}")
    n, per = config.num_stages, config.conv_per_stage
    return {
        "network_class_name": PLAIN_CONV_UNET,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(config.stage_channels),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": plain_conv_unet_kernels(config),
            "strides": [list(s) for s in config.stage_strides],
            "n_conv_per_stage": [per] * n,
            "n_conv_per_stage_decoder": [per] * (n - 1),
            "conv_bias": True,
            "norm_op": _NORM_OPS[norm[0]],
            "norm_op_kwargs": dict(norm[1]),
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": _NONLINS[act[0]],
            "nonlin_kwargs": dict(act[1]),
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _build_from_architecture(architecture: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    require("nnunetv2", "building nnU-Net v2's network")
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], in_channels, num_classes,
                                  allow_init=True, deep_supervision=False)


def _pad_kernel(w: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """``w`` ``(O, I, *k)`` zero-padded, centred, to ``kernel`` (odd sizes: same outputs with same padding)."""
    k = list(w.shape[2:])
    if k == list(kernel):
        return w
    out = w.new_zeros(*w.shape[:2], *kernel)
    lo = [(K - kk) // 2 for K, kk in zip(kernel, k)]
    out[(slice(None), slice(None), *[slice(a, a + kk) for a, kk in zip(lo, k)])] = w
    return out


@torch.no_grad()
def to_plain_conv_unet(model: nn.Module, in_channels: int | None = None, num_classes: int | None = None) -> nn.Module:
    """Stock nnU-Net v2 ``PlainConvUNet`` (eval mode, no deep supervision) holding a backbone's weights.

    Args:
        model: a :class:`~uniseg_hub.models.uniseg.UniSegBackbone`.
        in_channels: the stem (default: the task's modality count, else the only stem).
        num_classes: keep the first ``num_classes`` head rows (default: the task's classes, else all).

    Returns:
        the network; its logits equal ``model``'s first ``num_classes`` channels (float32 rounding).
    """
    model = check_backbone(model, "an nnU-Net v2 network")
    cfg: UniSegConfig = model.config
    c_in = resolve_in_channels(cfg, in_channels, "an nnU-Net v2 network")
    k_out = int(num_classes) if num_classes is not None else cfg.task_num_classes()
    if not 1 <= k_out <= cfg.num_classes:
        raise ValueError(f"num_classes must be in 1..{cfg.num_classes} (the heads' outputs), got {k_out}")
    arch = plain_conv_unet_architecture(cfg)
    net = _build_from_architecture(arch, c_in, k_out)
    kernels = arch["arch_kwargs"]["kernel_sizes"]
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    ours = BackboneLayout.of(cfg, c_in)

    def put(block: nn.Module, conv: str, norm: str, kernel: Sequence[int]) -> None:
        block.conv.weight.copy_(_pad_kernel(state[f"{conv}.weight"], kernel))
        block.conv.bias.copy_(state[f"{conv}.bias"])
        block.norm.load_state_dict(sub_state(state, norm), strict=True)

    for s, blocks in enumerate(ours.encoder):
        for b, (conv, norm) in enumerate(blocks):
            put(net.encoder.stages[s][0].convs[b], conv, norm, kernels[s])
    n = cfg.num_stages
    for u, blocks in enumerate(ours.decoder):
        for b, (conv, norm) in enumerate(blocks):
            put(net.decoder.stages[u].convs[b], conv, norm, kernels[n - 2 - u])
        net.decoder.transpconvs[u].weight.copy_(state[ours.upsample[u]])
        net.decoder.transpconvs[u].bias.zero_()
        net.decoder.seg_layers[u].weight.copy_(state[ours.heads[u]][:k_out])
        net.decoder.seg_layers[u].bias.zero_()
    return net.eval()


# ---------------------------------------------------------------------------------------------------------------
# Plans and dataset.json
# ---------------------------------------------------------------------------------------------------------------
def _normalization(config: UniSegConfig, modalities: Sequence[str]) -> tuple[list[str], list[bool], dict[str, dict]]:
    """nnU-Net v2 ``normalization_schemes``, ``use_mask_for_norm`` and intensity properties, one per channel."""
    schemes, masks, props = [], [], {}
    for c, modality in enumerate(modalities):
        spec = config.preprocessing.scheme_for(modality)
        if spec["scheme"] == "clip_rescale":  # clip to [low, high], (x - low) / (high - low)
            low, high = spec["low"], spec["high"]
            schemes.append("CTNormalization")
            masks.append(False)
            props[str(c)] = {"mean": low, "std": high - low, "percentile_00_5": low, "percentile_99_5": high}
        elif spec["scheme"] == "ct":
            schemes.append("CTNormalization")
            masks.append(False)
            props[str(c)] = {"mean": spec["mean"], "std": spec["sd"], "percentile_00_5": spec["low"],
                             "percentile_99_5": spec["high"]}
        else:
            schemes.append("ZScoreNormalization")
            masks.append(bool(spec.get("use_nonzero_mask", False)))
            props[str(c)] = {}  # z-scoring uses each image's own statistics
    return schemes, masks, props


def nnunetv2_plans(config: UniSegConfig, modalities: Sequence[str], *, dataset_name: str,
                   plans_name: str = "nnUNetPlans", configuration: str = "3d_fullres", batch_size: int = 2) -> dict[str, Any]:
    """An nnU-Net v2 plans dict for ``config``: its preprocessing contract and the PlainConvUNet architecture.

    ``original_median_*`` (informational for nnU-Net's planners) are the contract's spacing and patch.
    """
    schemes, masks, props = _normalization(config, modalities)
    spacing = [float(s) for s in config.preprocessing.spacing]
    patch = [int(p) for p in config.patch_size]
    conf = {
        "data_identifier": f"{plans_name}_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(batch_size),
        "patch_size": patch,
        "median_image_size_in_voxels": patch,
        "spacing": spacing,
        "normalization_schemes": schemes,
        "use_mask_for_norm": masks,
        **copy.deepcopy(_RESAMPLING),
        "architecture": plain_conv_unet_architecture(config),
        "batch_dice": True,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": patch,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {configuration: conf},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": props,
        "uniseg_hub": {"config_name": config.name, "preprocessing_source": config.preprocessing.source},
    }


def nnunetv2_dataset_json(task: TaskSpec, num_training: int = 0, *, name: str | None = None) -> dict[str, Any]:
    """nnU-Net v2 ``dataset.json``: channel names = the task's modalities, labels = its classes (consecutive).

    nnU-Net writes class ``c`` as label value ``c``; a task whose label values are not ``0..K-1`` keeps them
    under ``"uniseg_label_values"`` (nnU-Net ignores the key) and a warning is logged.
    """
    labels: dict[str, int] = {"background": 0}
    for c, cname in enumerate(task.class_names, start=1):
        key = cname if cname not in labels else f"{cname} ({c})"
        labels[key] = c
    out = {
        "name": name or task.name,
        "description": f"exported by uniseg_hub from task {task.name!r}",
        "channel_names": {str(i): m for i, m in enumerate(task.modalities)},
        "labels": labels,
        "numTraining": int(num_training),
        "file_ending": ".nii.gz",
    }
    if task.label_values != list(range(task.num_classes)):
        out["uniseg_label_values"] = {str(c): v for c, v in enumerate(task.label_values)}
        logger.warning("task %r has label values %s; nnU-Net v2 writes classes as 0..%d (mapping kept in dataset.json "
                       "'uniseg_label_values')", task.name, task.label_values, task.num_classes - 1)
    return out


def _task_for(config: UniSegConfig, task: TaskSpec | None, modalities: Sequence[str] | None, in_channels: int) -> TaskSpec:
    """The task the export describes: ``task``, else the config's, with ``modalities`` filling in unnamed ones.

    A modality picks the channel's normalisation, so an ``"unknown"`` one (what a transfer without ``modalities``
    records) must be named, unless the contract has a single modality.
    """
    spec = task if task is not None else config.task_spec()
    if modalities is not None:
        modalities = [str(m) for m in modalities]
        if spec is not None and set(spec.modalities) != {"unknown"} and modalities != list(spec.modalities):
            raise ValueError(f"modalities {modalities} contradict task {spec.name!r}'s {spec.modalities}")
    else:
        modalities = list(spec.modalities) if spec is not None else None
    if modalities is None or "unknown" in modalities:
        known = sorted(config.preprocessing.normalization)
        if len(known) != 1:
            what = f"task {spec.name!r} does not name its modalities" if spec is not None else "the model's config names no task"
            raise ValueError(
                f"{what}, and the modality of each input channel picks its normalisation: pass modalities=[...] "
                f"(--modalities), {in_channels} of {known}"
            )
        modalities = known * in_channels
    if len(modalities) != in_channels:
        raise ValueError(f"{len(modalities)} modalities {modalities} for the exported stem of {in_channels} channel(s)")
    for m in modalities:
        config.preprocessing.scheme_for(m)  # raises for a modality without a contract
    if spec is None:
        return TaskSpec(config.name or "uniseg", config.num_classes, modalities)
    return TaskSpec(spec.name, spec.num_classes, modalities, dict(spec.labels))


def _dataset_name(name: str | None, fallback: str) -> str:
    if name is None:
        name = "Dataset999_" + (re.sub(r"[^A-Za-z0-9_.\-]+", "_", fallback).strip("_") or "UniSeg")
    if not _DATASET_NAME.match(name):
        raise ValueError(f"dataset_name must look like Dataset123_Name (nnU-Net finds models by that id), got {name!r}")
    return name


# ---------------------------------------------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Nnunetv2Export:
    """What an export wrote (paths) and how well stock nnU-Net's network reproduces ours.

    Attributes:
        folder: the trained-model folder (or the pretrained-export folder).
        checkpoint: the ``.pth`` file.
        plans: the plans file(s) written.
        dataset_json: ``dataset.json`` (trained-model folder only).
        max_abs_diff: max abs logit difference between nnunetv2's network built from the plans and ours on a
            random batch (``None`` when not checked).
        widened_kernels: PlainConvUNet stages whose kernel is wider than UniSeg's encoder kernel (zero taps).
    """

    folder: Path
    checkpoint: Path
    plans: list[Path] = field(default_factory=list)
    dataset_json: Path | None = None
    max_abs_diff: float | None = None
    widened_kernels: list[int] = field(default_factory=list)


def _check_network(model: UniSegBackbone, architecture: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
                   in_channels: int, num_classes: int, atol: float) -> float:
    """Build nnunetv2's network from ``architecture`` (as nnunetv2 does), load ``weights`` strictly, compare logits."""
    net = _build_from_architecture(architecture, in_channels, num_classes)
    net.load_state_dict(weights, strict=True)
    net.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, *[2 * d for d in model.config.divisor], generator=g)
    ref = copy.deepcopy(model).float().cpu().eval()
    ref.set_deep_supervision(False)
    with torch.no_grad():
        diff = float((net(x) - ref(x)[:, :num_classes]).abs().max())
    if not diff <= atol:
        raise ValueError(f"nnU-Net v2's PlainConvUNet differs from the UniSeg backbone by {diff:.3g} (expected ≤ {atol})")
    return diff


def _save_json(data: Mapping[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def to_nnunetv2(model: nn.Module, folder: str | os.PathLike, *, dataset_name: str | None = None,
                task: TaskSpec | None = None, modalities: Sequence[str] | None = None, in_channels: int | None = None,
                configuration: str = "3d_fullres", fold: int = 0, batch_size: int = 2,
                mirror_axes: Sequence[int] | None = None, check: bool = True, atol: float = 1e-4) -> Nnunetv2Export:
    """Write an nnU-Net v2 trained-model folder for a backbone, loadable by stock nnunetv2.

    ``folder`` gets ``dataset.json``, ``plans.json`` and ``fold_{fold}/checkpoint_final.pth``. For
    ``nnUNetv2_predict -d ID -c 3d_fullres -f 0`` it must be ``$nnUNet_results/<dataset_name>/
    nnUNetTrainer__nnUNetPlans__<configuration>``; ``nnUNetv2_predict_from_modelfolder -m folder`` and
    ``nnUNetPredictor.initialize_from_trained_model_folder(folder, use_folds=(fold,))`` take it anywhere.

    Args:
        model: a :class:`~uniseg_hub.models.uniseg.UniSegBackbone` (a ``UniSeg`` raises: transfer it first).
        folder: the folder to write (created; existing files are replaced).
        dataset_name: ``DatasetNNN_Name`` (default ``Dataset999_<task or model name>``).
        task: what the channels and classes are (default: ``model.config.tasks[0]``).
        modalities: one modality per input channel when neither ``task`` nor the config names the task.
        in_channels: the stem to export (default: the task's modality count, else the only stem).
        configuration: the plans configuration name.
        fold: the fold folder to write.
        batch_size: the plans' training batch size (nnU-Net training only).
        mirror_axes: ``inference_allowed_mirroring_axes`` of the checkpoint (default ``model.config.mirror_axes``: the
            axes the weights were trained mirrored along).
        check: build nnunetv2's network from the written plans, load the checkpoint strictly and compare its
            logits with ``model``'s (raises above ``atol``).

    Returns:
        :class:`Nnunetv2Export`.
    """
    model = check_backbone(model, "an nnU-Net v2 model")
    cfg: UniSegConfig = model.config
    c_in = resolve_in_channels(cfg, in_channels, "an nnU-Net v2 network")
    spec = _task_for(cfg, task, modalities, c_in)
    k = min(spec.num_classes, cfg.num_classes)
    name = _dataset_name(dataset_name, spec.name)
    plans = nnunetv2_plans(cfg, spec.modalities, dataset_name=name, configuration=configuration, batch_size=batch_size)
    dataset = nnunetv2_dataset_json(spec, name=name)
    net = to_plain_conv_unet(model, c_in, k)
    weights = {key: v.detach().clone() for key, v in net.state_dict().items()}
    arch = plans["configurations"][configuration]["architecture"]
    diff = _check_network(model, arch, weights, c_in, k, atol) if check else None
    out = Path(folder)
    (out / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    ckpt = out / f"fold_{fold}" / "checkpoint_final.pth"
    torch.save({
        "network_weights": weights,
        "trainer_name": "nnUNetTrainer",
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset, "device": "cpu"},
        "inference_allowed_mirroring_axes": tuple(int(a) for a in (model.config.mirror_axes if mirror_axes is None else mirror_axes)),
        "uniseg_hub": {"config": cfg.to_dict(), "in_channels": c_in, "provenance": dict(cfg.provenance)},
    }, ckpt)
    result = Nnunetv2Export(folder=out, checkpoint=ckpt, plans=[_save_json(plans, out / "plans.json")],
                            dataset_json=_save_json(dataset, out / "dataset.json"), max_abs_diff=diff,
                            widened_kernels=_widened(cfg))
    logger.info("wrote nnU-Net v2 model folder %s (%s, %d channel(s) %s, %d classes%s)", out, name, c_in,
                ",".join(spec.modalities), k,
                "" if result.max_abs_diff is None else f", network max abs diff {result.max_abs_diff:.3g}")
    return result


def _widened(config: UniSegConfig) -> list[int]:
    return [s for s, (a, b) in enumerate(zip(plain_conv_unet_kernels(config), config.conv_kernel_sizes)) if a != list(b)]


def export_nnunetv2_pretrained(weights: Any, out_dir: str | os.PathLike, *, in_channels: int | None = None,
                               modalities: Sequence[str] | None = None, dataset_plans: str | os.PathLike | None = None,
                               plans_name: str = "UniSegPlans", configuration: str = "3d_fullres_uniseg",
                               check: bool = True, atol: float = 1e-4) -> Nnunetv2Export:
    """Pretrained weights for ``nnUNetv2_train ... -pretrained_weights FILE`` and the plans to train them with.

    A prompt-driven UniSeg is transferred first the paper's way (:func:`uniseg_hub.models.adapters.from_upstream`,
    ``strategy="official"``: prompt and fusion dropped, the first transposed conv's prompt channel dropped; a
    channel count without a pretrained stem gets one adapted from the nearest). ``out_dir`` gets:

    * ``uniseg_pretrained.pth`` — ``{"network_weights": ...}`` in PlainConvUNet's keys. nnU-Net's
      ``load_pretrained_weights`` skips the heads (``.seg_layers.``) and checks that every other key exists with
      the same shape in the network built from the plans: the input channels and the architecture must match.
    * ``<plans_name>.json`` — complete plans with UniSeg's preprocessing contract (spacing, normalisation) and
      architecture (configuration ``3d_fullres``), for ``nnUNetv2_move_plans_between_datasets``.
    * ``uniseg_configuration.json`` — ``{"configurations": {configuration: {...}}}``: a configuration that
      ``inherits_from`` your data set's ``3d_fullres`` (its own spacing, normalisation and preprocessed data)
      and sets UniSeg's architecture and patch — the downstream setting of the paper. With ``dataset_plans``
      (your ``nnUNetPlans.json``) it is also merged into that file.

    Args:
        weights: a model, or anything :func:`uniseg_hub.models.adapters.load_upstream` / ``from_pretrained`` takes.
        in_channels: input channels of your data set (default: a backbone's task / only stem).
        modalities: one modality per channel (picks the normalisation of ``<plans_name>.json``).
        dataset_plans: an nnU-Net v2 plans file to add ``configuration`` to (in place).
    """
    model = weights if isinstance(weights, nn.Module) else load_pretrained(weights, family=UNISEG_FAMILY)
    if isinstance(model, UniSeg):
        if in_channels is None and len(model.config.input_channels) > 1:
            raise ValueError(
                f"this UniSeg has stems for {model.config.input_channels} channels: say how many input channels your "
                "data set has with in_channels= (--channels); other counts get a stem adapted from the nearest"
            )
        c = int(in_channels) if in_channels is not None else model.config.input_channels[0]
        backbone = from_upstream(model, num_classes=model.num_classes, in_channels=c, strategy="official")
        with torch.no_grad():  # keep the upstream heads (deterministic; nnU-Net does not transfer them anyway)
            backbone.decoder.heads.load_state_dict(model.decoder.heads.state_dict())
        backbone.eval()
    else:
        backbone = check_backbone(model, "an nnU-Net v2 pretrained checkpoint")
    cfg: UniSegConfig = backbone.config
    c_in = resolve_in_channels(cfg, in_channels, "an nnU-Net v2 network")
    spec = _task_for(cfg, None, modalities, c_in)
    plans = nnunetv2_plans(cfg, spec.modalities, dataset_name="Dataset998_UniSegPretrained", plans_name=plans_name,
                           configuration="3d_fullres")
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    block = {"configurations": {configuration: {"inherits_from": "3d_fullres", "patch_size": list(cfg.patch_size),
                                                "architecture": arch}}}
    theirs = None
    if dataset_plans is not None:
        dataset_plans = Path(dataset_plans)
        if not dataset_plans.is_file():
            raise FileNotFoundError(f"no nnU-Net plans file at {dataset_plans}")
        theirs = json.loads(dataset_plans.read_text(encoding="utf-8"))
        if "3d_fullres" not in theirs.get("configurations", {}):
            raise ValueError(f"{dataset_plans} has no 3d_fullres configuration to inherit from; configurations: "
                             f"{list(theirs.get('configurations', {}))}")
        theirs["configurations"][configuration] = block["configurations"][configuration]
    net = to_plain_conv_unet(backbone, c_in, cfg.num_classes)
    state = {key: v.detach().clone() for key, v in net.state_dict().items()}
    diff = _check_network(backbone, arch, state, c_in, cfg.num_classes, atol) if check else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "uniseg_pretrained.pth"
    torch.save({"network_weights": state, "uniseg_hub": {"config": cfg.to_dict(), "in_channels": c_in}}, ckpt)
    written = [_save_json(plans, out / f"{plans_name}.json"), _save_json(block, out / "uniseg_configuration.json")]
    if theirs is not None:
        written.append(_save_json(theirs, dataset_plans))
    result = Nnunetv2Export(folder=out, checkpoint=ckpt, plans=written, max_abs_diff=diff, widened_kernels=_widened(cfg))
    logger.info("wrote nnU-Net v2 pretrained weights %s (%d input channel(s)) and plans %s", ckpt, c_in,
                ", ".join(str(p) for p in written))
    return result
