"""Weights into models: one resolver for every source, one path for official checkpoints, one builder.

:func:`load_state_and_config` turns anything a user may hold into ``(state dict in uniseg_hub key names,
UniSegConfig, source)``:

* a local ``save_pretrained`` folder or ``.safetensors`` file (:mod:`uniseg_hub.weights.safetensors_dir`), or a
  fine-tuning run folder (its ``final/`` model);
* an official nnU-Net v1 ``.model`` (+ ``.model.pkl``) file, or a folder holding one, read without executing
  pickled code (:mod:`uniseg_hub.weights.nnunet_v1`) and renamed by the family's ``filter_fn``;
* a name from the weights registry (:mod:`uniseg_hub.weights.registry`), fetched and converted once by :func:`download`;
* a Hugging Face Hub id (``org/name``), resolved through huggingface_hub's cache.

This module never imports a model (timm's ``build_model_with_cfg`` pattern): which class a config builds and how
official keys map to ours come in as a :class:`ModelFamily` (``uniseg_hub.models.uniseg.UNISEG_FAMILY``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from torch import nn

from ..atomic import recovered_path
from ..config import UniSegConfig
from .nnunet_v1 import CheckpointError, load_nnunet_v1_checkpoint
from .safetensors_dir import CONFIG_NAME, WEIGHTS_NAME, read_safetensors, save_folder
from .report import load_with_report
from .registry import default_cache_dir, fetch, list_pretrained, registry_entry, sha256_file

__all__ = ["ModelFamily", "load_state_and_config", "build_and_load", "load_pretrained", "convert_nnunet_v1", "download"]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelFamily:
    """What the loader needs to know about the model classes, passed in by the model layer.

    Attributes:
        model_class_for: ``(config, requested class or None, source) -> class`` that builds ``config`` (refuses a
            requested class that cannot hold those weights).
        filter_fn: ``(official state dict, model) -> state dict in the model's keys`` (timm's ``pretrained_filter_fn``).
    """

    model_class_for: Callable[[UniSegConfig, "type[nn.Module] | None", str], "type[nn.Module]"]
    filter_fn: Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

    def official_to_ours(self, state: Mapping[str, torch.Tensor], config: UniSegConfig) -> dict[str, torch.Tensor]:
        """Official keys → ours for ``config``'s network (only the key map is needed: built on the meta device)."""
        with torch.device("meta"):
            skeleton = self.model_class_for(config, None, "")(config)
        return self.filter_fn(state, skeleton)


def _read_official(path: Path, config: UniSegConfig | None, family: ModelFamily) -> tuple[dict[str, torch.Tensor], UniSegConfig, dict]:
    state, derived, meta = load_nnunet_v1_checkpoint(path)
    config = config or derived
    if config is None:
        raise CheckpointError(
            f"{path} has no companion plans file {path.name}.pkl, so the network cannot be derived; put the .pkl "
            "next to it or pass config=UniSegConfig(...)"
        )
    return family.official_to_ours(state, config), config, meta


def load_state_and_config(
    id_or_path: str | os.PathLike,
    *,
    family: ModelFamily,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: str | bool | None = None,
    map_location: str | torch.device = "cpu",
    config: UniSegConfig | None = None,
) -> tuple[dict[str, torch.Tensor], UniSegConfig, str]:
    """Resolve weights to ``(state dict in uniseg_hub key names, UniSegConfig, source string)`` without building a model.

    Args:
        id_or_path: a ``save_pretrained`` folder, a ``.safetensors`` file, an official ``.model`` file (or a
            folder holding ``model_final_checkpoint.model``), a registry name, or a Hub id ``org/name``.
        revision, cache_dir, local_files_only, force_download, token: as in huggingface_hub (Hub ids; for
            registry names ``cache_dir``/``local_files_only`` apply to :func:`download`).
        config: use this config instead of the one stored with the weights (needed for a ``.model`` without ``.pkl``).
        family: the model classes and key filter (official checkpoints).
    """
    raw = str(id_or_path)
    path = recovered_path(Path(raw).expanduser())  # an interrupted atomic folder swap reads as the old folder
    if path.is_dir() and not (path / WEIGHTS_NAME).is_file():
        path = _run_folder_model(path)
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            state, cfg, meta = read_safetensors(path, map_location=map_location)
            return state, config or cfg, str(path)
        models = sorted(path.glob("*.model"))
        if len(models) == 1 or (path / "model_final_checkpoint.model").is_file():
            target = path / "model_final_checkpoint.model" if (path / "model_final_checkpoint.model").is_file() else models[0]
            state, cfg, _ = _read_official(target, config, family)
            return _to(state, map_location), cfg, str(target)
        raise CheckpointError(
            f"{path} holds no weights: expected {WEIGHTS_NAME} + {CONFIG_NAME} (uniseg_hub) or one official .model file, "
            f"found {sorted(p.name for p in path.iterdir())[:12]}"
        )
    if path.is_file():
        if path.suffix == ".pt" and path.name.startswith("checkpoint_"):
            raise CheckpointError(
                f"{path} is a training checkpoint (for --resume), not a model: load the run's model folder "
                f"{path.parent / 'final'} (or {path.parent / 'best'}), or the run folder {path.parent} itself")
        if path.suffix == ".safetensors":
            state, cfg, _ = read_safetensors(path, map_location=map_location)
            return state, config or cfg, str(path)
        if path.name.endswith(".model.pkl"):
            raise CheckpointError(f"{path} is the trainer/plans pickle; pass the checkpoint {path.name[:-4]} instead")
        state, cfg, _ = _read_official(path, config, family)
        return _to(state, map_location), cfg, str(path)
    if raw in list_pretrained():
        folder = download(raw, family=family, cache_dir=cache_dir, local_files_only=local_files_only, force=force_download)
        state, cfg, _ = load_state_and_config(folder, family=family, map_location=map_location, config=config)
        return state, cfg, f"{raw} ({folder})"
    if _HUB_ID.match(raw) and not raw.endswith((".model", ".safetensors", ".pth", ".pt")):
        try:
            files = [hf_hub_download(raw, f, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                     force_download=force_download, token=token) for f in (CONFIG_NAME, WEIGHTS_NAME)]
        except LocalEntryNotFoundError as e:
            raise FileNotFoundError(
                f"{raw!r} is not in the Hugging Face cache and downloading is disabled (local_files_only / HF_HUB_OFFLINE): {e}"
            ) from None
        except HfHubHTTPError as e:
            raise FileNotFoundError(f"could not fetch {raw!r} from the Hugging Face Hub: {e}") from None
        state, cfg, _ = read_safetensors(Path(files[1]), map_location=map_location)
        return state, config or cfg, f"hf://{raw}" + (f"@{revision}" if revision else "")
    raise FileNotFoundError(
        f"cannot resolve weights {raw!r}: it is not an existing file or folder, not a registered name "
        f"({list_pretrained()}), and not a Hugging Face Hub id of the form 'org/name'"
    )


def _run_folder_model(path: Path) -> Path:
    """A fine-tuning run folder (``uniseg_hub.training.finetune``'s output) → its ``final/`` model folder."""
    final = recovered_path(path / "final")
    if (final / WEIGHTS_NAME).is_file():
        return final
    if (path / "checkpoint_latest.pt").is_file():
        best = recovered_path(path / "best")
        hint = f" its best model so far is in {best}," if (best / WEIGHTS_NAME).is_file() else ""
        raise CheckpointError(f"{path} holds a fine-tuning run that has not finished (no final/ model folder yet):{hint} "
                              "resume it with `uniseg-hub finetune ... --resume` to finish it")
    return path


def _to(state: dict[str, torch.Tensor], map_location: str | torch.device) -> dict[str, torch.Tensor]:
    return state if str(map_location) == "cpu" else {k: v.to(map_location) for k, v in state.items()}



def build_and_load(
    cls: type[nn.Module], config: UniSegConfig, state: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = ""
) -> nn.Module:
    """Build ``cls(config)`` and load ``state`` with a report (``model.load_report``); eval mode.

    When ``state`` has exactly the model's keys and shapes, the model is built on the ``meta`` device and the
    tensors are assigned (no random initialisation of weights that are overwritten anyway).
    """
    with torch.device("meta"):
        skeleton = cls(config)
    own = skeleton.state_dict()
    exact = own.keys() == state.keys() and all(tuple(own[k].shape) == tuple(v.shape) for k, v in state.items())
    if exact:
        model, assign = skeleton, True
    else:
        model, assign = cls(config), False
    report = load_with_report(model, state, strict=strict, source=source, assign=assign)
    model.load_report = report
    report.log(logger)
    return model.eval()



def load_pretrained(
    id_or_path: str | os.PathLike,
    *,
    family: ModelFamily,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    model_cls: type[nn.Module] | None = None,
    config: UniSegConfig | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load pretrained UniSeg weights from anywhere (see :func:`load_state_and_config`) into a ready model.

    Returns a :class:`~uniseg_hub.models.uniseg.UniSeg` when the weights hold a prompt, else a
    :class:`~uniseg_hub.models.uniseg.UniSegBackbone` (or ``model_cls`` when given), in eval mode, with
    ``model.load_report`` (a :class:`~uniseg_hub.weights.report.LoadReport`). ``overrides`` change config fields that
    do not change shapes (e.g. ``deep_supervision=True``).

    Raises:
        LoadError: with ``strict=True`` (default) any unexpected, missing or shape-mismatched key.
        CheckpointError: unsafe, truncated or foreign files.

    Example:
        >>> model = from_pretrained("uniseg-11task")                 # the authors' weights, converted once
        >>> model(torch.zeros(1, 1, 64, 192, 192), task_id="liver").shape
        torch.Size([1, 4, 64, 192, 192])
    """
    state, cfg, source = load_state_and_config(
        id_or_path, family=family, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
        force_download=force_download, token=token, map_location=map_location, config=config,
    )
    if overrides:
        cfg = cfg.replace(**overrides)
    cls = family.model_class_for(cfg, model_cls, source)
    return build_and_load(cls, cfg, state, strict=strict, source=source)



def convert_nnunet_v1(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    family: ModelFamily,
    plans_path: str | os.PathLike | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Convert an official ``.model`` (+ ``.model.pkl``) into a ``save_pretrained`` folder (strictly checked).

    The folder is written only once the conversion succeeded, and atomically as a whole (:func:`save_folder`): a
    kill never leaves an empty folder, or weights without their config."""
    checkpoint = Path(checkpoint)
    state, cfg, meta = load_nnunet_v1_checkpoint(checkpoint, plans_path)
    if cfg is None:
        raise CheckpointError(f"cannot convert {checkpoint}: its plans file {checkpoint}.pkl is missing")
    ours = family.official_to_ours(state, cfg)
    model = build_and_load(family.model_class_for(cfg, None, str(checkpoint)), cfg, ours, strict=True, source=str(checkpoint))
    prov = {"converted_from": checkpoint.name, "source_sha256": sha256_file(checkpoint), "format": "nnU-Net v1 checkpoint",
            "epoch": meta.get("epoch"), "trainer": meta.get("name"), "converter": "uniseg_hub.convert_nnunet_v1"}
    prov.update({k: v for k, v in (provenance or {}).items() if v is not None})
    prov.setdefault("license", {"license": "other", "license_name": "uniseg-noncommercial",
                                "license_link": "https://github.com/yeerwen/UniSeg/blob/main/LICENSE"})
    return save_folder(model.state_dict(), cfg, out_dir, provenance=prov)




def download(
    name: str | Mapping[str, Any],
    *,
    family: ModelFamily,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    local_files_only: bool = False,
) -> Path:
    """Fetch registered weights (:func:`~uniseg_hub.weights.registry.fetch`) and return a folder that loads.

    ``nnunet-v1`` entries are converted once into ``<cache>/<name>/converted/`` (``config.json`` +
    ``model.safetensors``); ``force`` downloads and converts again.
    """
    entry = dict(name) if isinstance(name, Mapping) else registry_entry(name)
    if entry["format"] != "nnunet-v1":
        return fetch(entry, cache_dir=cache_dir, force=force, progress=progress, local_files_only=local_files_only)
    converted = default_cache_dir(cache_dir) / entry["name"] / "converted"
    if (converted / WEIGHTS_NAME).is_file() and not force:
        return converted
    official = fetch(entry, cache_dir=cache_dir, force=force, progress=progress, local_files_only=local_files_only)
    convert_nnunet_v1(official, converted, family=family, provenance={
        "registry_name": entry["name"], "source": entry.get("urls") or [f.get("url") for f in entry["files"]],
        "license": entry.get("license"), "paper": entry.get("paper")})
    return converted
