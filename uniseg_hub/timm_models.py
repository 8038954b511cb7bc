"""timm registration of the UniSeg presets: ``import uniseg_hub.timm_models`` then ``timm.create_model("uniseg_11task")``.

Registered names: ``uniseg_11task`` (the upstream prompt-driven network), ``uniseg_btcv`` and ``uniseg_vs`` (the
official downstream backbones). Importing this module registers them (``import uniseg_hub`` alone does not, to
keep timm out of the base import).

Why these entrypoints do not go through timm's ``build_model_with_cfg`` / ``FeatureListNet``:

* UniSeg is 3D and its reductions are anisotropic (``feature_info[i]["reduction"]`` is a per-axis list such as
  ``[1, 2, 2]``); timm's ``FeatureInfo`` asserts an int reduction that grows per stage, and its feature wrappers
  and ``pretrained_cfg`` (``input_size=(C, H, W)``, ``mean``/``std``) assume 2D images.
* ``UniSeg.forward`` takes a task id, which timm's wrappers do not pass.
* The weights' preprocessing contract (spacing, CT windowing, z-score) lives in our ``config.json``, not in
  timm's mean/std.

So ``features_only=True`` returns the :class:`~uniseg_hub.encoder.UniSegEncoder` itself: its ``forward`` already
returns every stage's features (bottleneck last) and it carries ``feature_info`` (``num_chs``, per-axis
``reduction``, ``module``), which is what ``FeatureListNet`` would provide. ``pretrained=True`` loads the
registered weights through :func:`uniseg_hub.hub.from_pretrained`; ``pretrained_cfg_overlay=dict(file=...)``
(timm's way to point at local weights) selects any file/folder/registry name/hub id instead.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import nn

from .config import UniSegConfig
from .hub import DEFAULT_PRETRAINED, uniseg, uniseg_backbone, uniseg_encoder

__all__ = ["uniseg_11task", "uniseg_btcv", "uniseg_vs"]

_PRESETS = {
    "uniseg_11task": UniSegConfig.uniseg_11task,
    "uniseg_btcv": UniSegConfig.btcv,
    "uniseg_vs": UniSegConfig.vs,
}


def _create(variant: str, pretrained: bool = False, *, features_only: bool = False, out_indices: Any = None,
            pretrained_cfg: Any = None, pretrained_cfg_overlay: dict | None = None, cache_dir: Any = None,
            **overrides: Any) -> nn.Module:
    if out_indices is not None:
        raise ValueError(
            "UniSeg's encoder returns the features of every stage (bottleneck last); out_indices is not supported — "
            "select stages from the returned list (see model.feature_info)"
        )
    source = None
    if pretrained:
        overlay = dict(pretrained_cfg_overlay or {})
        source = overlay.get("file") or overlay.get("hf_hub_id") or DEFAULT_PRETRAINED
    if features_only:
        if source is None:
            return uniseg_encoder(config=_PRESETS[variant](**overrides))
        return uniseg_encoder(checkpoint=source, **overrides)
    if variant == "uniseg_11task":
        if source is None:
            return uniseg(config=_PRESETS[variant](**overrides))
        return uniseg(checkpoint=source, **overrides)
    if source is None:
        return uniseg_backbone(config=_PRESETS[variant](**overrides))
    num_classes = overrides.pop("num_classes", _PRESETS[variant]().num_classes)
    return uniseg_backbone(checkpoint=source, num_classes=num_classes, **overrides)


@register_model
def uniseg_11task(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Upstream UniSeg, 11 tasks, patch 64x192x192 (32.1M parameters); ``features_only=True``: its encoder."""
    return _create("uniseg_11task", pretrained, **kwargs)


@register_model
def uniseg_btcv(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Downstream UniSeg backbone with 14 classes (BTCV); pretrained = official transfer of the upstream weights."""
    return _create("uniseg_btcv", pretrained, **kwargs)


@register_model
def uniseg_vs(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Downstream UniSeg backbone with 2 classes (VS); pretrained = official transfer of the upstream weights."""
    return _create("uniseg_vs", pretrained, **kwargs)
