"""timm registration of the UniSeg presets: ``import uniseg_hub.timm_models`` then ``timm.create_model("uniseg_11task")``.

Registered names: one per preset of :data:`uniseg_hub.config.PRESETS` — ``uniseg_11task`` (the upstream
prompt-driven network), ``uniseg_btcv`` and ``uniseg_vs`` (the official downstream backbones). Importing this module
registers them (``import uniseg_hub`` alone does not, to keep timm out of the base import).

Why these entrypoints do not go through timm's ``build_model_with_cfg`` / ``FeatureListNet``:

* UniSeg is 3D and its reductions are anisotropic (``feature_info[i]["reduction"]`` is a per-axis list such as
  ``[1, 2, 2]``); timm's ``FeatureInfo`` asserts an int reduction that grows per stage, and its feature wrappers
  and ``pretrained_cfg`` (``input_size=(C, H, W)``, ``mean``/``std``) assume 2D images.
* ``UniSeg.forward`` takes a task id, which timm's wrappers do not pass.
* The weights' preprocessing contract (spacing, CT windowing, z-score) lives in our ``config.json``, not in
  timm's mean/std.

So ``features_only=True`` returns the :class:`~uniseg_hub.models.encoder.UniSegEncoder` itself: its ``forward`` already
returns every stage's features (bottleneck last) and it carries ``feature_info`` (``num_chs``, per-axis
``reduction``, ``module``), which is what ``FeatureListNet`` would provide. ``pretrained=True`` loads the
registered weights through :func:`uniseg_hub.hub.from_pretrained`; ``pretrained_cfg_overlay=dict(file=...)``
(timm's way to point at local weights) selects any file/folder/registry name/hub id instead.
"""

from __future__ import annotations

from typing import Any, Callable

from timm.models import register_model
from torch import nn

from .config import PRESETS, UniSegConfig
from .hub import DEFAULT_PRETRAINED, uniseg, uniseg_backbone, uniseg_encoder

__all__: list[str] = []  # timm's register_model appends each registered name


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
            return uniseg_encoder(config=UniSegConfig.preset(variant, **overrides))
        return uniseg_encoder(checkpoint=source, **overrides)
    if UniSegConfig.preset(variant).num_tasks > 0:
        if source is None:
            return uniseg(config=UniSegConfig.preset(variant, **overrides))
        return uniseg(checkpoint=source, **overrides)
    if source is None:
        return uniseg_backbone(config=UniSegConfig.preset(variant, **overrides))
    num_classes = overrides.pop("num_classes", UniSegConfig.preset(variant).num_classes)
    return uniseg_backbone(checkpoint=source, num_classes=num_classes, **overrides)


def _entrypoint(variant: str) -> Callable[..., nn.Module]:
    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create(variant, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = variant
    create.__module__ = __name__
    create.__doc__ = f"{PRESETS[variant].description}; ``features_only=True``: its encoder."
    return create


for _variant in PRESETS:  # one timm entrypoint per preset, named after it
    globals()[_variant] = register_model(_entrypoint(_variant))
