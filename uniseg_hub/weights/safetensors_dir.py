"""uniseg_hub's own weight format: a folder with ``config.json`` + ``model.safetensors`` + a generated ``README.md``.

The folder is what :meth:`UniSeg.save_pretrained` writes and what a Hugging Face Hub repository holds; it is
written as a whole, atomically (:func:`uniseg_hub.atomic.atomic_folder`: a kill leaves the old or the new folder),
and read through :func:`~uniseg_hub.atomic.recovered_path`. The ``model.safetensors`` file also carries the config
(and provenance) in its header metadata, so a lone ``.safetensors`` file is self-describing too. Reading never
executes code (safetensors holds raw tensors only).

Layout::

    my_model/
      config.json          UniSegConfig.to_dict(): architecture + tasks + preprocessing contract
      model.safetensors    state dict in uniseg_hub key names; metadata: format, uniseg_hub_config, provenance
      README.md            model card (architecture, tasks, preprocessing contract, provenance, license)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..atomic import atomic_folder, recovered_path
from ..config import UniSegConfig
from .nnunet_v1 import CheckpointError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "save_folder", "read_safetensors", "model_card", "UNISEG_LICENSE"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

#: The licence of the authors' UniSeg code and released weights (non-commercial; commercial licence on request).
UNISEG_LICENSE = {
    "license": "other",
    "license_name": "uniseg-noncommercial",
    "license_link": "https://github.com/yeerwen/UniSeg/blob/main/LICENSE",
}
PAPER = "https://arxiv.org/abs/2304.03493"


def _json_meta(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def save_folder(
    state_dict: Mapping[str, torch.Tensor],
    config: UniSegConfig,
    directory: str | os.PathLike,
    *,
    provenance: Mapping[str, Any] | None = None,
    write_card: bool = True,
    atomic: bool = True,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and the model card) into ``directory``.

    The folder is replaced as a whole (:func:`uniseg_hub.atomic.atomic_folder`): the files are written into a
    temporary sibling folder and swapped in, so a kill at any moment leaves the complete old folder (or none) or the
    complete new one. Entries of an existing folder that are not written here (a ``.git``, other files) are kept.

    Args:
        state_dict: tensors under uniseg_hub key names (``encoder.stages.0.0.convs.1.weight`` ...).
        config: the network's config; stored as ``config.json`` and in the safetensors header.
        provenance: where the weights come from (``source``, ``source_sha256``, ``converted_from``, ``license``,
            ...), merged into ``config.provenance``; stored in config.json and the header, shown on the card.
        atomic: ``False`` writes the files straight into ``directory`` (for a caller that already writes into a
            temporary folder of :func:`~uniseg_hub.atomic.atomic_folder`, as ``save_pretrained`` does).

    Returns:
        The directory.
    """
    if atomic:
        with atomic_folder(directory, carry_over=True) as tmp:
            save_folder(state_dict, config, tmp, provenance=provenance, write_card=write_card, atomic=False)
        return Path(directory)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if provenance:
        config = config.replace(provenance={**config.provenance, **dict(provenance)})
    provenance = config.provenance
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"format": "pt", "uniseg_hub_config": _json_meta(config.to_dict())}
    if provenance:
        metadata["provenance"] = _json_meta(dict(provenance))
    save_file(tensors, directory / WEIGHTS_NAME, metadata=metadata)
    (directory / CONFIG_NAME).write_text(config.to_json() + "\n", encoding="utf-8")
    if write_card:
        model_card(config, provenance, num_parameters=sum(t.numel() for t in tensors.values())).save(directory / CARD_NAME)
    return directory


def read_safetensors(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], UniSegConfig, dict[str, Any]]:
    """Read our format from a folder (``config.json`` + ``model.safetensors``) or a ``.safetensors`` file.

    The config is taken from ``config.json`` when present (folder, or next to the file), else from the file's
    header metadata.

    Returns:
        ``(state_dict, config, meta)`` with ``meta`` holding ``provenance`` (dict, possibly empty) and ``path``.

    Raises:
        CheckpointError: missing files, a truncated/corrupt file, or no config anywhere.
    """
    path = recovered_path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise CheckpointError(f"{path}: expected {WEIGHTS_NAME} (a uniseg_hub save_pretrained folder), found {found or 'nothing'}")
    try:
        with safe_open(weights, framework="pt") as fh:
            header = fh.metadata() or {}
        state = load_file(weights, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    config_file = weights.parent / CONFIG_NAME
    try:
        if config_file.is_file():
            config = UniSegConfig.from_json(config_file)
        elif "uniseg_hub_config" in header:
            config = UniSegConfig.from_dict(json.loads(header["uniseg_hub_config"]))
        else:
            raise CheckpointError(
                f"{weights} carries no UniSeg config: expected {CONFIG_NAME} next to it or 'uniseg_hub_config' in "
                f"its metadata (found metadata keys {sorted(header)}); was it written by uniseg_hub?"
            )
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"the config of {weights} is not a valid UniSegConfig: {e}") from None
    provenance = json.loads(header["provenance"]) if "provenance" in header else {}
    return state, config, {"provenance": provenance, "path": str(weights)}


def _task_table(config: UniSegConfig) -> str:
    if not config.tasks:
        return f"No task list: a prompt-free network with {config.num_classes} output classes." if config.num_tasks == 0 else (
            f"{config.num_tasks} prompt tasks (no names recorded).")
    rows = ["| id | task | classes (incl. background) | input channels | labels |", "| --- | --- | --- | --- | --- |"]
    if config.num_tasks == 0:
        rows[0] = "| task | classes (incl. background) | input channels | labels (value: name) |"
        rows[1] = "| --- | --- | --- | --- |"
        t = config.tasks[0]
        labels = ", ".join(f"{k}: {v}" for k, v in t.labels.items())
        rows.append(f"| {t.name} (prompt-free: no task id) | {t.num_classes} | {' + '.join(t.modalities)} | {labels} |")
        return "\n".join(rows)
    for i, t in enumerate(config.tasks):
        labels = ", ".join(f"{k}: {v}" for k, v in t.labels.items())
        rows.append(f"| {i} | {t.name} | {t.num_classes} | {' + '.join(t.modalities)} | {labels} |")
    return "\n".join(rows)


def _preprocessing_text(config: UniSegConfig) -> str:
    pp = config.preprocessing
    lines = [
        f"- target spacing (z, y, x): {pp.spacing} mm",
        f"- orientation: {pp.orientation or 'keep the file voxel order (as nnU-Net v1)'}",
        f"- patch size (D, H, W): {config.patch_size}; inputs to `UniSeg` must be exactly this size "
        f"(use sliding-window inference for volumes); the backbone takes multiples of {config.divisor}",
    ]
    if pp.source:
        lines.insert(0, f"- plan: {pp.source}")
    for mod, spec in pp.normalization.items():
        mask = " inside the nonzero mask (0 outside)" if spec.get("use_nonzero_mask") else ""
        if spec["scheme"] == "clip_rescale":
            lines.append(f"- {mod}: clip to [{spec['low']}, {spec['high']}] and scale linearly to [0, 1]")
        elif spec["scheme"] == "ct":
            lines.append(f"- {mod}: clip to [{spec['low']:.6g}, {spec['high']:.6g}] (data set foreground 0.5/99.5 percentiles), "
                         f"then (x - {spec['mean']:.6g}) / {spec['sd']:.6g} (foreground mean / sd){mask}")
        else:
            lines.append(f"- {mod}: z-score per image (subtract mean, divide by standard deviation){mask}")
    return "\n".join(lines)


def _fmt_dice(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and v == v else "–"


def _provenance_text(prov: Mapping[str, Any]) -> str:
    """Provenance as Markdown: the transfer and the fine-tuning (recipe, data, validation Dice) get sections."""
    lines = [f"- {k}: {v}" for k, v in prov.items() if k not in ("license", "finetuned", "transfer")]
    transfer = prov.get("transfer")
    if isinstance(transfer, Mapping):
        lines.append("")
        lines.append("### Transfer")
        lines += [f"- {k}: {v}" for k, v in transfer.items()]
    ft = prov.get("finetuned")
    if isinstance(ft, Mapping):
        title = "Fine-tuning" if isinstance(transfer, Mapping) else "Training (from random initialisation)"
        lines += ["", f"### {title}", f"- data set: {ft.get('dataset')} ({len(ft.get('train_cases') or [])} training cases)",
                  f"- epochs: {ft.get('epochs')}", f"- made by: {ft.get('made_by')}"]
        recipe = ft.get("recipe") or {}
        keys = ("epochs", "iterations_per_epoch", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "poly_exponent",
                "grad_clip", "batch_dice", "oversample_foreground", "augment", "seed", "layer_decay")
        lines.append("- recipe: " + ", ".join(f"{k}={recipe[k]}" for k in keys if k in recipe))
        val = ft.get("validation") or {}
        if val:
            lines.append(f"- validation ({val.get('setting', '')}): mean Dice {_fmt_dice(val.get('mean_dice', val.get('periodic_mean_dice')))}"
                         + (f" on {len(val['cases'])} case(s)" if val.get("cases") else "")
                         + (f", epoch {val['epoch']}" if "epoch" in val else ""))
            for name, d in (val.get("dice") or {}).items():
                lines.append(f"  - {name}: {_fmt_dice(d)}")
    return "\n".join(lines).strip() or "- not recorded"


def model_card(config: UniSegConfig, provenance: Mapping[str, Any] | None = None, *, num_parameters: int | None = None) -> ModelCard:
    """The model card (``README.md``) of a saved UniSeg: architecture, tasks, preprocessing contract, provenance, licence."""
    prov = {**config.provenance, **dict(provenance or {})}
    lic = prov.get("license") or {}
    if isinstance(lic, str):
        lic = {"license": lic}
    data = ModelCardData(
        library_name="uniseg_hub",
        license=lic.get("license", "other"),
        license_name=lic.get("license_name"),
        license_link=lic.get("license_link"),
        tags=["medical-imaging", "3d-segmentation", "uniseg", "pytorch_model_hub_mixin", "model_hub_mixin"],
        pipeline_tag="image-segmentation",
    )
    kind = "UniSeg (prompt-driven universal segmentation)" if config.num_tasks else "UniSeg backbone (prompt-free encoder-decoder)"
    params = f"{num_parameters:,}" if num_parameters is not None else "see model.safetensors"
    prov_lines = _provenance_text(prov)
    licence_text = (
        f"{lic.get('license', 'other')}"
        + (f" ({lic['license_name']}, {lic['license_link']})" if lic.get("license_name") else "")
        + ("" if lic else " — no licence was recorded for these weights; ask their author before reuse")
    )
    body = f"""
# {config.name}

{kind}, from *UniSeg: A Prompt-driven Universal Segmentation Model as well as A Strong Representation Learner*
(Ye et al., MICCAI 2023, [{PAPER}]({PAPER}); official code github.com/yeerwen/UniSeg). Saved by `uniseg_hub`.

## Use

```python
import uniseg_hub
model = uniseg_hub.from_pretrained("<this folder or hub id>")   # UniSeg or UniSegBackbone, eval mode
print(model.load_report)                                        # what was matched / adapted / left at init
```

## Architecture

- stages (channels): {config.stage_channels}; strides: {config.pool_op_kernel_sizes}; conv kernels: {config.conv_kernel_sizes}
- {config.conv_per_stage} conv-norm-act blocks per stage; norm {config.norm}; activation {config.act}
- input channel stems: {config.input_channels}; output classes: {config.num_classes}; prompt tasks: {config.num_tasks}
- parameters: {params}

## Tasks

{_task_table(config)}

## Preprocessing contract

{_preprocessing_text(config)}

## Provenance

{prov_lines}

## License

{licence_text}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
