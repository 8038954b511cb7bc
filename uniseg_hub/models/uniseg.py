"""UniSeg: a prompt-driven universal segmentation model (Ye et al., MICCAI 2023, arXiv 2304.03493).

Origin: github.com/yeerwen/UniSeg (a patched nnU-Net v1; its code and weights are licensed for non-commercial
use only). This is an independent re-implementation: no official code is copied here. This file holds the two networks
built from :class:`~uniseg_hub.config.UniSegConfig`:

* :class:`UniSeg` — encoder → universal prompt → decoder, ``forward(x, task_id)``; the upstream 11-task model.
* :class:`UniSegBackbone` — encoder → decoder without the prompt; the official downstream network.

and :func:`checkpoint_filter_fn`, the one pure function that maps official nnU-Net/UniSeg state-dict keys to
ours (and :func:`to_official_state_dict` back), plus the registry of presets (:func:`create_model`).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..atomic import atomic_folder
from ..config import PRESETS, UniSegConfig
from .decoder import SegmentationHeads, UniSegDecoder
from .encoder import UniSegEncoder
from ..weights.safetensors_dir import model_card, save_folder
from .prompt import UniversalPrompt, as_task_tensor
from ..weights.loader import ModelFamily, load_pretrained
from ..weights.report import LoadReport

__all__ = [
    "UniSeg",
    "UniSegBackbone",
    "checkpoint_filter_fn",
    "to_official_state_dict",
    "official_key_map",
    "create_model",
    "list_models",
    "model_class_for",
    "UNISEG_FAMILY",
]


class _UniSegBase(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="uniseg_hub",
    repo_url="https://github.com/yeerwen/UniSeg",
    paper_url="https://arxiv.org/abs/2304.03493",
    tags=["medical-imaging", "3d-segmentation", "uniseg"],
):
    """What both networks share: config handling, deep-supervision switch, head reset, timm-style helpers, and
    ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (huggingface_hub's mixin; loading is strict and
    goes through :func:`uniseg_hub.weights.loader.load_pretrained`, saving writes ``config.json`` = ``config.to_dict()``,
    ``model.safetensors`` and a generated model card)."""

    encoder: UniSegEncoder
    decoder: UniSegDecoder
    #: What the load that made this model matched, adapted, dropped or left at init (``from_pretrained``,
    #: ``from_upstream``, ``from_dynunet``); ``None`` for a model built from a config.
    load_report: LoadReport | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *, revision: str | None = None, cache_dir: Any = None,
                        local_files_only: bool = False, force_download: bool = False, token: Any = None,
                        strict: bool = True, map_location: Any = "cpu", **overrides: Any) -> nn.Module:
        """Load weights (folder, ``.safetensors``, official ``.model``, registry name or Hub id); see
        :func:`uniseg_hub.weights.loader.load_pretrained`. Mismatched keys raise unless ``strict=False``."""
        return load_pretrained(pretrained_model_name_or_path, family=UNISEG_FAMILY, revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, force_download=force_download, token=token,
                               strict=strict, map_location=map_location,
                               model_cls=None if cls is _UniSegBase else cls, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike, *, config: Any = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict[str, Any] | None = None,
                        **push_to_hub_kwargs: Any) -> str | None:
        """huggingface_hub's ``save_pretrained``, atomic: the folder (``config.json``, ``model.safetensors``,
        ``README.md``) is written next to ``save_directory`` and swapped in as a whole
        (:func:`uniseg_hub.atomic.atomic_folder`), so a kill leaves the complete old folder (or none) or the new one;
        other entries of an existing folder (a ``.git`` ...) are kept. ``push_to_hub=True`` then uploads it."""
        with atomic_folder(save_directory, carry_over=True) as tmp:
            super().save_pretrained(tmp, config=config, model_card_kwargs=model_card_kwargs)
        if not push_to_hub:
            return None
        if config is not None:
            push_to_hub_kwargs["config"] = config
        return self.push_to_hub(repo_id=repo_id or Path(save_directory).name, model_card_kwargs=model_card_kwargs,
                                **push_to_hub_kwargs)

    def _save_pretrained(self, save_directory: Any) -> None:
        save_folder(self.state_dict(), self.config, save_directory, atomic=False)  # save_pretrained swaps the folder

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        n = sum(t.numel() for t in self.state_dict().values())
        return model_card(self.config, num_parameters=n)

    def __init__(self, config: UniSegConfig | None, overrides: Mapping[str, Any]) -> None:
        super().__init__()
        config = config if config is not None else self.default_config()
        # the model owns a private copy: set_deep_supervision / reset_classifier never touch the caller's config
        self.config = copy.deepcopy(config.replace(**overrides) if overrides else config)

    @staticmethod
    def default_config() -> UniSegConfig:
        raise NotImplementedError

    @property
    def feature_info(self) -> list[dict]:
        return self.encoder.feature_info

    @property
    def num_classes(self) -> int:
        return self.decoder.num_classes

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    def set_deep_supervision(self, enable: bool = True) -> None:
        """Return logits at every decoder scale (finest first) instead of the finest only."""
        self.decoder.deep_supervision = bool(enable)
        self.config.deep_supervision = bool(enable)

    def set_grad_checkpointing(self, enable: bool = True, *, levels: int | None = None) -> None:
        """Recompute encoder and decoder stage activations in the backward pass (less memory, more time);
        ``levels``: only the finest ``levels`` resolution levels (:class:`~uniseg_hub.models.layers.GradCheckpointing`)."""
        self.encoder.set_grad_checkpointing(enable, levels=levels)
        self.decoder.set_grad_checkpointing(enable, levels=levels)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace every segmentation head by a freshly initialised one with ``num_classes`` outputs."""
        ref = self.decoder.heads[0].weight
        heads = SegmentationHeads([h.in_channels for h in self.decoder.heads], num_classes)
        self.decoder.heads = heads.to(device=ref.device, dtype=ref.dtype)
        self.config.num_classes = int(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.decoder.heads

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm-style parameter groups (regexes over parameter names), e.g. for layer-wise lr decay."""
        return dict(
            stem=r"^encoder\.stages\.0\.0\.",
            blocks=r"^encoder\.stages\.(\d+)" if coarse else [(r"^encoder\.stages\.(\d+)\.(\d+)", None)],
        )


class UniSeg(_UniSegBase):
    """The prompt-driven universal segmentation network.

    Args:
        config: network configuration; defaults to :meth:`UniSegConfig.uniseg_11task`.
        **overrides: fields of the config to change, e.g. ``base_num_features=8``.

    Shapes:
        ``forward(x, task_id)``: ``x`` is ``(B, C, *config.patch_size)`` with ``C`` in ``config.input_channels``
        (the prompt is sized to the training patch — larger volumes go through :mod:`uniseg_hub.inference`);
        ``task_id`` is an int, or one id per sample. Returns logits ``(B, num_classes, *patch_size)``, or with
        deep supervision a list of logits, finest first.

    Example:
        >>> model = UniSeg(UniSegConfig.uniseg_11task(base_num_features=4, patch_size=[16, 32, 32])).eval()
        >>> model(torch.zeros(2, 1, 16, 32, 32), task_id=[0, 7]).shape
        torch.Size([2, 4, 16, 32, 32])
    """

    def __init__(self, config: UniSegConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        self.encoder = UniSegEncoder(self.config)
        self.prompt = UniversalPrompt(self.config)
        self.decoder = UniSegDecoder(self.config, extra_bottleneck_channels=1)

    @staticmethod
    def default_config() -> UniSegConfig:
        return UniSegConfig.uniseg_11task()

    @property
    def num_tasks(self) -> int:
        return self.prompt.num_tasks

    def check_batch(self, x: torch.Tensor, task_id: Any) -> torch.Tensor:
        """Validate an input batch and return ``task_id`` as a ``(B,)`` long tensor (clear errors otherwise).

        ``task_id``: an int, a task name (``"liver"``), a sequence of either (one per sample) or a tensor of ids.
        """
        self.encoder.check_batch(x)
        if list(x.shape[2:]) != self.config.patch_size:
            raise ValueError(
                f"the universal prompt is sized to the training patch: UniSeg needs inputs of exactly "
                f"{tuple(self.config.patch_size)} (D, H, W), got {tuple(x.shape[2:])}. Segment other sizes with "
                f"uniseg_hub.inference (sliding window, roi_size={self.config.patch_size}), or use "
                "UniSegBackbone / the encoder alone, which take any multiple of "
                f"{tuple(self.config.divisor)}."
            )
        return as_task_tensor(self._task_ids(task_id), x.shape[0], self.num_tasks, x.device)

    def _task_ids(self, task_id: Any) -> Any:
        """Task names → ids (through the config's task list); ids and tensors pass through."""
        if task_id is None:
            names = [t.name for t in self.config.tasks] or list(range(self.num_tasks))
            raise ValueError(f"UniSeg needs a task: pass task_id= one of {names} (an id or a name)")
        if isinstance(task_id, str):
            return self.config.task_index(task_id)
        if isinstance(task_id, (list, tuple)) and any(isinstance(t, str) for t in task_id):
            return [self.config.task_index(t) for t in task_id]
        return task_id

    def forward(self, x: torch.Tensor, task_id: int | str | Sequence[int | str] | torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.forward_unchecked(x, self.check_batch(x, task_id))

    def forward_unchecked(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The network on a checked batch and ``(B,)`` long task tensor, with no Python-side checks: one traceable
        graph, which :func:`uniseg_hub.models.perf.try_compile` compiles and :mod:`uniseg_hub.export` exports."""
        *skips, bottleneck = self.encoder.forward_unchecked(x)
        return self.decoder(skips, self.prompt.forward_unchecked(bottleneck, task))


class UniSegBackbone(_UniSegBase):
    """The prompt-free UniSeg encoder-decoder (the official downstream ``UniSeg_Backbone``).

    Args:
        config: network configuration; defaults to :meth:`UniSegConfig.btcv`. ``num_tasks`` is ignored.
        **overrides: fields of the config to change.

    Shapes:
        ``forward(x)``: ``(B, C, D, H, W)`` with ``(D, H, W)`` multiples of ``config.divisor`` →
        logits ``(B, num_classes, D, H, W)`` (or the deep-supervision list, finest first).
    """

    def __init__(self, config: UniSegConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, overrides)
        self.encoder = UniSegEncoder(self.config)
        self.decoder = UniSegDecoder(self.config, extra_bottleneck_channels=0)

    @staticmethod
    def default_config() -> UniSegConfig:
        return UniSegConfig.btcv()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_batch(x)
        return self.forward_unchecked(x)

    def check_batch(self, x: torch.Tensor) -> None:
        """Raise a clear error for a batch the network cannot serve (see :meth:`UniSegEncoder.check_batch`)."""
        self.encoder.check_batch(x)

    def forward_unchecked(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The network on a checked batch, with no Python-side checks (what :func:`uniseg_hub.models.perf.try_compile`
        compiles and :mod:`uniseg_hub.export` exports)."""
        *skips, bottleneck = self.encoder.forward_unchecked(x)
        return self.decoder(skips, bottleneck)


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoint keys <-> ours
# ---------------------------------------------------------------------------------------------------------------
def _official_key(key: str, config: UniSegConfig, head_prefix: str) -> str:
    """Our state-dict key → the official nnU-Net/UniSeg key (``head_prefix``: ``seg_outputs`` or ``seg_outputs_down``)."""
    last, n = config.num_stages - 1, config.conv_per_stage

    def block(prefix: str, stage: str, b: str, sequential_pair: bool) -> str:
        if not sequential_pair:  # StackedConvLayers: <prefix>.<stage>.blocks.<b>
            return f"{prefix}.{stage}.blocks.{b}"
        # nn.Sequential(StackedConvLayers(n - 1 convs), StackedConvLayers(1 conv))
        return f"{prefix}.{stage}.0.blocks.{b}" if int(b) < n - 1 else f"{prefix}.{stage}.1.blocks.0"

    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"prompt\.prompt", lambda m: "intermedia_prompt"),
        (r"prompt\.fusion\.(\d+)\.(conv|norm)\.(\w+)", lambda m: f"fusion_layer.blocks.{m[1]}.{m[2]}.{m[3]}"),
        (r"encoder\.stages\.0\.0\.convs\.(\d+)\.(\w+)", lambda m: f"conv_blocks_context.0.blocks.0.conv_{m[1]}.{m[2]}"),
        (
            r"encoder\.stages\.(\d+)\.(\d+)\.(conv|norm)\.(\w+)",
            lambda m: f"{block('conv_blocks_context', m[1], m[2], int(m[1]) == last)}.{m[3]}.{m[4]}",
        ),
        (r"decoder\.stages\.(\d+)\.upsample\.weight", lambda m: f"tu.{m[1]}.weight"),
        (
            r"decoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv|norm)\.(\w+)",
            lambda m: f"{block('conv_blocks_localization', m[1], m[2], True)}.{m[3]}.{m[4]}",
        ),
        (r"decoder\.heads\.(\d+)\.weight", lambda m: f"{head_prefix}.{m[1]}.weight"),
    ]
    for pattern, repl in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m).replace(".norm.", ".instnorm.")
    raise KeyError(f"no official counterpart for state-dict key {key!r}")


def official_key_map(model: nn.Module) -> dict[str, str]:
    """``{our key: official key}`` for every state-dict entry of ``model`` (a :class:`UniSeg` or :class:`UniSegBackbone`)."""
    head_prefix = "seg_outputs" if isinstance(model, UniSeg) else "seg_outputs_down"
    return {k: _official_key(k, model.config, head_prefix) for k in model.state_dict()}


def is_official_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True when the keys are the official nnU-Net/UniSeg layout (``conv_blocks_context.*`` ...)."""
    return any(k.startswith(("conv_blocks_context.", "module.conv_blocks_context.")) for k in state_dict)


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official UniSeg/nnU-Net v1 state dict to ``model``'s keys (pure; native dicts pass through).

    Keys without a counterpart in ``model`` are kept unchanged, so a following ``load_state_dict(strict=True)``
    names them as unexpected instead of silently dropping them. A ``module.`` prefix (DataParallel) is removed.
    """
    if not is_official_state_dict(state_dict):
        return dict(state_dict)
    to_ours = {v: k for k, v in official_key_map(model).items()}
    out = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        out[to_ours.get(key, key)] = value
    return out


def to_official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict under the official key names, in the official network's key order."""
    state = model.state_dict()
    mapped = {official: state[ours] for ours, official in official_key_map(model).items()}
    order = ["intermedia_prompt", "fusion_layer", "conv_blocks_localization", "conv_blocks_context", "tu.", "seg_outputs"]
    rank = {k: next(i for i, p in enumerate(order) if k.startswith(p)) for k in mapped}
    return dict(sorted(mapped.items(), key=lambda kv: rank[kv[0]]))


def model_class_for(config: UniSegConfig, model_cls: type[nn.Module] | None, source: str) -> type[nn.Module]:
    """The class that builds ``config`` (``UniSeg`` when it has a prompt, else ``UniSegBackbone``), or
    ``model_cls`` after checking that it can hold those weights."""
    cls = model_cls or (UniSeg if config.num_tasks > 0 else UniSegBackbone)
    if cls is UniSegBackbone and config.num_tasks > 0:
        raise ValueError(
            f"{source} holds an upstream UniSeg ({config.num_tasks} prompt tasks), not a backbone: load it with "
            "UniSeg.from_pretrained, or transfer it with uniseg_hub.models.adapters.from_upstream(weights, num_classes=...)"
        )
    if cls is UniSeg and config.num_tasks == 0:
        raise ValueError(f"{source} holds a prompt-free UniSegBackbone; load it with UniSegBackbone.from_pretrained")
    return cls



#: The UniSeg model family as the loader (:mod:`uniseg_hub.weights.loader`) needs it: class choice and key filter.
UNISEG_FAMILY = ModelFamily(model_class_for=model_class_for, filter_fn=checkpoint_filter_fn)


# ---------------------------------------------------------------------------------------------------------------
# Presets (declared once in uniseg_hub.config.PRESETS)
# ---------------------------------------------------------------------------------------------------------------
def list_models() -> list[str]:
    """The preset names :func:`create_model` builds."""
    return sorted(PRESETS)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a preset (:data:`uniseg_hub.config.PRESETS`) with random weights, optionally overriding config fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    config = UniSegConfig.preset(name, **overrides)
    return model_class_for(config, None, name)(config)
