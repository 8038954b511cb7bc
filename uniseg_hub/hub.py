"""The user-facing entry points for weights: auto-class ``from_pretrained``, ``download``, ``convert_nnunet_v1``
and the torch.hub entrypoints (re-exported by ``hubconf.py`` and ``uniseg_hub.timm_models``).

They bind the UniSeg model family (:data:`uniseg_hub.models.uniseg.UNISEG_FAMILY`) to the loader
(:mod:`uniseg_hub.weights.loader`: one resolver for folders, ``.safetensors``, official ``.model`` files, run
folders, registry names and Hub ids) and the registry (:mod:`uniseg_hub.weights.registry`). :func:`from_pretrained`
builds the model, loads strictly (mismatches raise :class:`~uniseg_hub.weights.report.LoadError`) and attaches
``model.load_report``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .models.adapters import from_upstream
from .config import UniSegConfig
from .models.encoder import UniSegEncoder
from .models.uniseg import UNISEG_FAMILY, UniSeg, UniSegBackbone, is_official_state_dict
from .weights.report import LoadReport, load_with_report
from .weights import loader
from .weights.loader import build_and_load
from .weights.registry import DEFAULT_PRETRAINED, REGISTRY_DIR, default_cache_dir, list_pretrained, registry_entry

__all__ = [
    "from_pretrained",
    "load_state_and_config",
    "download",
    "convert_nnunet_v1",
    "list_pretrained",
    "registry_entry",
    "default_cache_dir",
    "REGISTRY_DIR",
    "DEFAULT_PRETRAINED",
    "uniseg",
    "uniseg_backbone",
    "uniseg_encoder",
]


def load_state_and_config(
    id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: str | bool | None = None,
    map_location: str | torch.device = "cpu",
    config: UniSegConfig | None = None,
) -> tuple[dict[str, torch.Tensor], UniSegConfig, str]:
    """``(state dict in uniseg_hub key names, UniSegConfig, source)`` of any weights, without building a model:
    a ``save_pretrained`` or run folder, ``.safetensors``, an official ``.model`` (+ ``.pkl``), a registry name or a
    Hub id (:func:`uniseg_hub.weights.loader.load_state_and_config`)."""
    return loader.load_state_and_config(id_or_path, family=UNISEG_FAMILY, revision=revision, cache_dir=cache_dir,
                                        local_files_only=local_files_only, force_download=force_download, token=token,
                                        map_location=map_location, config=config)


def from_pretrained(
    id_or_path: str | os.PathLike,
    *,
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
    ``model.load_report``. ``overrides`` change config fields that do not change shapes (e.g.
    ``deep_supervision=True``).

    Raises:
        LoadError: with ``strict=True`` any unexpected, missing or shape-mismatched key.
        CheckpointError: unsafe, truncated or foreign files.

    Example:
        >>> model = from_pretrained("uniseg-11task")                 # the authors' weights, converted once
        >>> model(torch.zeros(1, 1, 64, 192, 192), task_id="liver").shape
        torch.Size([1, 4, 64, 192, 192])
    """
    return loader.load_pretrained(id_or_path, family=UNISEG_FAMILY, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only, strict=strict, map_location=map_location,
                                  model_cls=model_cls, config=config, force_download=force_download, token=token,
                                  **overrides)


def download(name: str | Mapping[str, Any], **kwargs: Any) -> Path:
    """Fetch registered weights (sha256-checked) and return a folder :func:`from_pretrained` loads; official
    checkpoints are converted once into ``<cache>/<name>/converted/`` (keywords ``cache_dir``, ``force``,
    ``progress``, ``local_files_only``)."""
    return loader.download(name, family=UNISEG_FAMILY, **kwargs)


def convert_nnunet_v1(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Convert an official ``.model`` (+ ``.model.pkl``) into a ``save_pretrained`` folder (strictly checked;
    keywords ``plans_path``, ``provenance``)."""
    return loader.convert_nnunet_v1(checkpoint, out_dir, family=UNISEG_FAMILY, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# torch.hub entrypoints (re-exported by hubconf.py)
# ---------------------------------------------------------------------------------------------------------------
def _weights_source(pretrained: bool | str, checkpoint: str | os.PathLike | None) -> str | os.PathLike | None:
    if checkpoint is not None:
        return checkpoint
    if pretrained:
        return DEFAULT_PRETRAINED if pretrained is True else pretrained
    return None


def uniseg(pretrained: bool | str = False, checkpoint: str | os.PathLike | None = None, *,
           config: UniSegConfig | None = None, **overrides: Any) -> UniSeg:
    """The prompt-driven UniSeg (upstream 11-task network by default).

    Args:
        pretrained: ``True`` loads the authors' ``uniseg-11task`` weights; a string names registered weights or a Hub id.
        checkpoint: a local file/folder (official ``.model``, ``.safetensors``, ``save_pretrained`` folder); wins over ``pretrained``.
        config: network config when no weights are loaded (default :meth:`UniSegConfig.uniseg_11task`).
        **overrides: config fields to change (with weights: only those that keep shapes, e.g. ``deep_supervision``).
    """
    src = _weights_source(pretrained, checkpoint)
    if src is None:
        return UniSeg(config or UniSegConfig.uniseg_11task(), **overrides)
    return from_pretrained(src, model_cls=UniSeg, **overrides)


def uniseg_backbone(pretrained: bool | str = False, checkpoint: str | os.PathLike | None = None, *,
                    num_classes: int | None = None, config: UniSegConfig | None = None, **overrides: Any) -> UniSegBackbone:
    """The prompt-free UniSeg encoder-decoder (official downstream network).

    With upstream weights (a prompt in the checkpoint) the official transfer is applied
    (``uniseg_hub.models.adapters.from_upstream(..., strategy="official")``) and ``num_classes`` sizes the new heads
    (default: the BTCV preset's 14). With backbone weights they are loaded strictly.
    """
    src = _weights_source(pretrained, checkpoint)
    if src is None:
        cfg = config or UniSegConfig.btcv()
        return UniSegBackbone(cfg, **({"num_classes": num_classes} if num_classes else {}), **overrides)
    state, cfg, source = load_state_and_config(src)
    if cfg.num_tasks > 0:
        return from_upstream(src, num_classes=num_classes or UniSegConfig.btcv().num_classes, strategy="official")
    if num_classes is not None and num_classes != cfg.num_classes:
        raise ValueError(f"{source} has {cfg.num_classes} output classes, not {num_classes}; use model.reset_classifier({num_classes})")
    return build_and_load(UniSegBackbone, cfg.replace(**overrides) if overrides else cfg, state, source=source)


def uniseg_encoder(pretrained: bool | str = False, checkpoint: str | os.PathLike | None = None, *,
                   config: UniSegConfig | None = None, **overrides: Any) -> UniSegEncoder:
    """The UniSeg encoder alone: ``forward(x)`` returns every stage's features, bottleneck last (``feature_info``).

    With weights, the ``encoder.*`` tensors of any UniSeg/backbone checkpoint are loaded strictly; the rest is
    listed as dropped in ``encoder.load_report``.
    """
    src = _weights_source(pretrained, checkpoint)
    if src is None:
        return UniSegEncoder((config or UniSegConfig.uniseg_11task()).replace(**overrides))
    state, cfg, source = load_state_and_config(src)
    return encoder_from_state(state, cfg.replace(**overrides) if overrides else cfg, source)


def encoder_from_state(state: Mapping[str, torch.Tensor], config: UniSegConfig, source: str = "") -> UniSegEncoder:
    """A :class:`UniSegEncoder` holding the ``encoder.*`` tensors of ``state`` (strict), with ``load_report``."""
    if is_official_state_dict(state):
        state = UNISEG_FAMILY.official_to_ours(state, config)
    sub = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    encoder = UniSegEncoder(config)
    report: LoadReport = load_with_report(encoder, sub, strict=True, source=source,
                                          dropped=[k for k in state if not k.startswith("encoder.")])
    encoder.load_report = report
    return encoder.eval()
