"""Transfer adapters: turn the pretrained universal UniSeg into a downstream model.

Three strategies (:func:`from_upstream`):

* ``"official"`` — the transfer of the paper's downstream experiments (``UniSeg_Trainer_DS``): a prompt-free
  :class:`~uniseg_hub.models.uniseg.UniSegBackbone` takes every upstream tensor except the universal prompt, the fusion
  layer and the old heads; the first transposed conv keeps all but its last input channel (the task-prompt
  channel); new heads are initialised at random. Reproduces the official transfer exactly.
* ``"keep-prompt"`` — keep the universal prompt and fusion layer and add the downstream data set as one more
  task of the prompt (a :class:`~uniseg_hub.models.uniseg.UniSeg` with ``num_tasks + 1``); everything fine-tunes. The
  prompt and fusion grow so that, at initialisation, the outputs of the old tasks are unchanged.
* ``"prompt-tuning"`` — as ``"keep-prompt"``, but the network is frozen: only the new task's prompt map and the
  segmentation heads learn (the old task maps are a frozen buffer, so no optimiser setting can move them).

Every strategy accepts any input channel count (a new stem adapted from the nearest pretrained one) and a new
training patch size, and attaches a :class:`~uniseg_hub.weights.report.LoadReport` naming what was matched, adapted,
dropped, left at random initialisation and frozen. :func:`freeze_encoder` and :func:`param_groups` (layer-wise
learning-rate decay over timm-style groups) complete the toolbox.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from ..config import PreprocessingConfig, TaskSpec, UniSegConfig
from .uniseg import UNISEG_FAMILY, UniSeg, UniSegBackbone
from .prompt import UniversalPrompt
from ..weights.report import LoadReport, load_with_report
from ..weights.loader import load_state_and_config

__all__ = [
    "STRATEGIES",
    "from_upstream",
    "load_upstream",
    "freeze_encoder",
    "param_groups",
    "layer_groups",
    "adapt_stem_weight",
    "PromptWithNewTasks",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("official", "keep-prompt", "prompt-tuning")
Strategy = Literal["official", "keep-prompt", "prompt-tuning"]

_STEM = "encoder.stages.0.0.convs"
_FIRST_UPSAMPLE = "decoder.stages.0.upsample.weight"


# ---------------------------------------------------------------------------------------------------------------
# Upstream weights
# ---------------------------------------------------------------------------------------------------------------
def load_upstream(model_or_weights: Any) -> tuple[dict[str, torch.Tensor], UniSegConfig, str]:
    """The upstream UniSeg as ``(state dict in our keys, config, source)``.

    Accepts a :class:`UniSeg` instance, anything :func:`uniseg_hub.weights.loader.load_state_and_config` accepts (hub id,
    local folder, safetensors ...), or an official nnU-Net v1 ``.model`` file (with its ``.model.pkl``).
    """
    if isinstance(model_or_weights, UniSegBackbone):
        raise TypeError(
            "from_upstream needs the universal (prompt-driven) UniSeg, got a UniSegBackbone: a backbone has no "
            "prompt to transfer from; fine-tune it directly or use reset_classifier(num_classes)"
        )
    if isinstance(model_or_weights, UniSeg):
        m = model_or_weights
        return {k: v.detach().clone() for k, v in m.state_dict().items()}, UniSegConfig.from_dict(m.config.to_dict()), type(m).__name__
    if not isinstance(model_or_weights, (str, os.PathLike)):
        raise TypeError(f"model_or_weights must be a UniSeg, a hub id or a checkpoint path, got {type(model_or_weights).__name__}")
    state, config, source = load_state_and_config(model_or_weights, family=UNISEG_FAMILY)  # the one official path
    return dict(state), config, str(source)


# ---------------------------------------------------------------------------------------------------------------
# Tensor adaptation helpers (pure functions)
# ---------------------------------------------------------------------------------------------------------------
def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem conv weight ``(O, C0, k...)`` to ``in_channels`` input channels (timm ``adapt_input_conv`` idea).

    Fewer channels: input channel ``j`` gets the sum of the pretrained channels ``i`` with ``i % C == j``; more
    channels: channel ``i`` gets pretrained channel ``i % C0`` scaled by ``C0 / C``. Either way a ``C``-channel
    input made by tiling a ``C0``-channel image (channel ``i`` = image channel ``i % C0``, or the inverse) gives the
    pretrained response (exactly when one count divides the other).
    """
    c0 = weight.shape[1]
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == c0:
        return weight.clone()
    if in_channels < c0:
        out = weight.new_zeros((weight.shape[0], in_channels, *weight.shape[2:]))
        for i in range(c0):
            out[:, i % in_channels] += weight[:, i]
        return out
    idx = torch.arange(in_channels) % c0
    return weight[:, idx] * (c0 / in_channels)


def _nearest_stem(available: Sequence[int], wanted: int) -> int:
    """The pretrained stem closest in channel count (ties: the larger one, which has seen more channels)."""
    return min(available, key=lambda c: (abs(c - wanted), -c))


def _add_stem(state: dict[str, torch.Tensor], config: UniSegConfig, in_channels: int | None) -> tuple[UniSegConfig, dict[str, str]]:
    """Add a stem for ``in_channels`` (in place on ``state``) adapted from the nearest one; returns the new config."""
    if in_channels is None or in_channels in config.input_channels:
        return config, {}
    src = _nearest_stem(config.input_channels, int(in_channels))
    key_w, key_b = f"{_STEM}.{in_channels}.weight", f"{_STEM}.{in_channels}.bias"
    state[key_w] = adapt_stem_weight(state[f"{_STEM}.{src}.weight"], int(in_channels))
    state[key_b] = state[f"{_STEM}.{src}.bias"].clone()
    how = f"new {in_channels}-channel stem adapted from the pretrained {src}-channel stem"
    return config.replace(input_channels=[*config.input_channels, int(in_channels)]), {key_w: how, key_b: how + " (bias copied)"}


def _resize_prompt(prompt: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if list(prompt.shape[2:]) == list(size):
        return prompt.clone()
    return F.interpolate(prompt, size=tuple(size), mode="trilinear", align_corners=False)


def _grow(old: torch.Tensor, fresh: torch.Tensor, new_rows: str, new_cols: str | None = None, col_src: slice | None = None) -> torch.Tensor:
    """Embed ``old`` into the top-left corner of a copy of ``fresh`` (which is larger in dims 0/1).

    ``new_rows``: ``"fresh"`` keeps the fresh initialisation of extra output rows, ``"mean"`` fills them with the
    mean of the old rows. ``new_cols``: ``"zero"`` zeroes extra input columns (so they do not change old outputs),
    ``"mean"`` fills them with the mean of ``old[:, col_src]``.
    """
    out = fresh.detach().clone()
    r = old.shape[0]
    if old.ndim == 1:
        out[:r] = old
        if new_rows == "mean" and out.shape[0] > r:
            out[r:] = old.mean(0)
        return out
    c = old.shape[1]
    out[:r, :c] = old
    if new_cols == "zero":
        out[:, c:] = 0
    elif new_cols == "mean":
        out[:r, c:] = old[:, col_src].mean(1, keepdim=True)
    if new_rows == "mean" and out.shape[0] > r:
        out[r:] = out[:r].mean(0, keepdim=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The prompt with frozen old tasks (prompt-tuning)
# ---------------------------------------------------------------------------------------------------------------
class PromptWithNewTasks(UniversalPrompt):
    """A :class:`UniversalPrompt` whose first ``num_frozen`` task maps are a frozen buffer (``prompt_frozen``) and
    whose new task maps are the only prompt parameter (``prompt_new``).

    ``prompt`` is their concatenation ``(1, T, *prompt_size)``, and the state dict still holds one ``prompt`` entry,
    so a checkpoint of this module loads into a plain :class:`UniversalPrompt` / :class:`UniSeg` and vice versa.
    """

    def __init__(self, config: UniSegConfig, num_frozen: int) -> None:
        super().__init__(config)
        full = self._parameters.pop("prompt")
        if not 0 < num_frozen < full.shape[1]:
            raise ValueError(f"num_frozen must be in 1..{full.shape[1] - 1}, got {num_frozen}")
        self.register_buffer("prompt_frozen", full.detach()[:, :num_frozen].clone())
        self.prompt_new = nn.Parameter(full.detach()[:, num_frozen:].clone())
        self._register_state_dict_hook(PromptWithNewTasks._merge_state)
        self._register_load_state_dict_pre_hook(self._split_state)

    @property
    def prompt(self) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([self.prompt_frozen, self.prompt_new], dim=1)

    @staticmethod
    def _merge_state(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
        frozen, new = state.pop(prefix + "prompt_frozen"), state.pop(prefix + "prompt_new")
        state[prefix + "prompt"] = torch.cat([frozen, new], dim=1)

    def _split_state(self, state: dict, prefix: str, *args: Any) -> None:
        if prefix + "prompt" in state:
            full = state.pop(prefix + "prompt")
            k = self.prompt_frozen.shape[1]
            state[prefix + "prompt_frozen"], state[prefix + "prompt_new"] = full[:, :k], full[:, k:]


# ---------------------------------------------------------------------------------------------------------------
# The transfer
# ---------------------------------------------------------------------------------------------------------------
def from_upstream(
    model_or_weights: Any,
    num_classes: int | None = None,
    in_channels: int | None = None,
    strategy: Strategy = "official",
    patch_size: Sequence[int] | None = None,
    *,
    task: TaskSpec | None = None,
    plan: PreprocessingConfig | None = None,
    task_name: str = "downstream",
    modalities: Sequence[str] | None = None,
    seed: int | None = 0,
) -> nn.Module:
    """Build a downstream model from the pretrained universal UniSeg.

    Args:
        model_or_weights: a :class:`UniSeg`, a hub id / folder (:func:`uniseg_hub.hub.load_state_and_config`),
            or an official ``.model`` checkpoint.
        num_classes: downstream classes including background (e.g. 14 for BTCV); default ``task.num_classes``.
        in_channels: input channels of the downstream data (default: ``len(task.modalities)``); a count without a
            pretrained stem gets a new stem adapted from the nearest one (:func:`adapt_stem_weight`).
        strategy: ``"official"`` (→ :class:`UniSegBackbone`), ``"keep-prompt"`` or ``"prompt-tuning"``
            (→ :class:`UniSeg` with one more task, ``config.default_task``).
        patch_size: training patch ``(D, H, W)``, a multiple of the network's divisor; default the upstream
            patch. For the prompt strategies the prompt is resized (trilinear) to the new bottleneck size.
        task: the downstream task — data set name, classes with their label values and names, modalities —
            recorded in ``model.config.tasks`` (the backbone's only task, or the prompt's new task), so
            prediction writes the data set's label values and names its classes. Without it a task named
            ``task_name`` with ``modalities`` (if given) and unnamed classes is recorded.
        plan: the data set's preprocessing plan (:func:`uniseg_hub.preprocessing.plan_dataset`), stored as
            ``model.config.preprocessing`` so that training and prediction apply the same one; default: the
            upstream contract.
        seed: the new tensors (heads, new prompt map, grown fusion rows) are drawn from this seed, without touching
            the global RNG (``None``: from the global RNG).

    Returns:
        the model (train mode), with ``.load_report``: matched, adapted (trimmed prompt channel, grown prompt and
        fusion, new stem, extended heads), dropped (prompt/fusion/old heads for ``"official"``), random init
        (the new heads) and, for ``"prompt-tuning"``, ``frozen``. ``model.config.provenance["transfer"]`` records
        the upstream weights, the strategy and the load report.

    Example:
        >>> down = from_upstream(upstream, num_classes=14)            # official BTCV transfer
        >>> down(torch.zeros(1, 1, 64, 192, 192)).shape
        torch.Size([1, 14, 64, 192, 192])
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown transfer strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    if task is not None:
        if num_classes is not None and int(num_classes) != task.num_classes:
            raise ValueError(f"num_classes={num_classes} disagrees with task {task.name!r} ({task.num_classes} classes)")
        if in_channels is not None and int(in_channels) != len(task.modalities):
            raise ValueError(f"in_channels={in_channels} disagrees with task {task.name!r} ({len(task.modalities)} modalities {task.modalities})")
        num_classes, in_channels = task.num_classes, len(task.modalities)
    elif num_classes is not None:
        if modalities is not None and in_channels is not None and len(modalities) != int(in_channels):
            raise ValueError(f"{len(modalities)} modalities {list(modalities)} for in_channels={in_channels}")
        if modalities is not None:
            task = TaskSpec(task_name, int(num_classes), list(modalities))
    if num_classes is None:
        raise ValueError("from_upstream needs num_classes (background included) or task=TaskSpec(...)")
    if isinstance(num_classes, bool) or int(num_classes) < 2:
        raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
    if task is None:
        task = TaskSpec(task_name, int(num_classes), ["unknown"] * int(in_channels or 1))
    state, up_cfg, source = load_upstream(model_or_weights)
    if up_cfg.num_tasks < 1 or "prompt.prompt" not in state:
        raise ValueError(f"{source}: expected a universal UniSeg with a prompt (num_tasks >= 1), found num_tasks={up_cfg.num_tasks}")
    cfg, adapted = _add_stem(state, up_cfg, in_channels)
    if patch_size is not None:
        cfg = cfg.replace(patch_size=[int(p) for p in patch_size])
    if plan is not None:
        cfg = cfg.replace(preprocessing=plan)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        if strategy == "official":
            model = _official(state, cfg, task, adapted, source)
        else:
            model = _with_new_task(state, cfg, task, adapted, source)
    if strategy == "prompt-tuning":
        new_id = model.config.default_task
        frozen = [n for n, p in model.named_parameters() if not n.startswith("decoder.heads.")]
        model.prompt = _split_prompt(model.prompt, new_id)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("decoder.heads.") or name == "prompt.prompt_new")
        model.load_report.frozen = frozen + [f"prompt.prompt[:, :{new_id}] (old task maps, buffer)"]
        _freeze_norm_stats(model, exclude=("decoder.heads",))
    model.config.provenance = {
        **{k: v for k, v in up_cfg.provenance.items() if k in ("license",)},
        "transfer": {"upstream": source, "upstream_model": up_cfg.name, "strategy": strategy, "seed": seed,
                     "load_report": model.load_report.summary()},
    }
    model.train()
    logger.info("%s", model.load_report.summary())
    return model


def _official(state: dict, cfg: UniSegConfig, task: TaskSpec, adapted: dict, source: str) -> UniSegBackbone:
    model = UniSegBackbone(cfg.replace(num_tasks=0, tasks=[task], default_task=None, num_classes=task.num_classes,
                                       name=f"{cfg.name}_{task.name}"))
    dropped = [k for k in state if k.startswith(("prompt.", "decoder.heads."))]
    down = {k: v for k, v in state.items() if k not in dropped}
    up = down[_FIRST_UPSAMPLE]
    down[_FIRST_UPSAMPLE] = up[:-1].clone()
    adapted = {**adapted, _FIRST_UPSAMPLE: f"dropped the last input channel (task prompt): {tuple(up.shape)} -> {tuple(up[:-1].shape)}"}
    report = load_with_report(model, down, strict=False, source=source, adapted=adapted, dropped=dropped)
    report.raise_for_errors()
    _check_only_heads_random(report)
    model.load_report = report
    return model


def _with_new_task(state: dict, cfg: UniSegConfig, task: TaskSpec, adapted: dict, source: str) -> UniSeg:
    t_old, nc_old = cfg.num_tasks, cfg.num_classes
    num_classes = task.num_classes
    tasks = list(cfg.tasks) or [TaskSpec(f"task_{i}", nc_old, ["unknown"]) for i in range(t_old)]
    names = [t.name for t in tasks]
    if task.name in names:
        raise ValueError(f"the upstream model already has a task named {task.name!r}: give the new task another name")
    tasks.append(task)
    new_cfg = cfg.replace(num_tasks=t_old + 1, tasks=tasks, num_classes=max(nc_old, num_classes), default_task=t_old,
                          name=f"{cfg.name}_{task.name}")
    model = UniSeg(new_cfg)
    fresh = model.state_dict()
    new_state = dict(state)
    adapted = dict(adapted)

    old_prompt = state["prompt.prompt"]
    prompt = torch.zeros_like(fresh["prompt.prompt"])
    prompt[:, :t_old] = _resize_prompt(old_prompt, new_cfg.prompt_size)
    new_state["prompt.prompt"] = prompt
    adapted["prompt.prompt"] = (f"{tuple(old_prompt.shape)} -> {tuple(prompt.shape)}: old task maps kept"
                                + (" (resized trilinearly)" if list(old_prompt.shape[2:]) != new_cfg.prompt_size else "")
                                + f", new task {t_old} starts at zero")
    n_fusion = new_cfg.fusion_blocks
    c = new_cfg.stage_channels[-1]
    for i in range(n_fusion):
        last = i == n_fusion - 1
        for suffix in ("conv.weight", "conv.bias", "norm.weight", "norm.bias"):
            key = f"prompt.fusion.{i}.{suffix}"
            old, base = state[key], fresh[key]
            if suffix == "conv.weight":
                cols = ("mean", slice(c, c + t_old)) if i == 0 else ("zero", None)
                new_state[key] = _grow(old, base, "mean" if last else "fresh", cols[0], cols[1])
            else:
                new_state[key] = _grow(old, base, "mean" if last else "fresh")
            if tuple(old.shape) != tuple(base.shape):
                adapted[key] = f"grown {tuple(old.shape)} -> {tuple(base.shape)} for the new task (old tasks' outputs unchanged)"
    for key in [k for k in state if k.startswith("decoder.heads.")]:
        old, base = state[key], fresh[key]
        if old.shape[0] != base.shape[0]:
            new_state[key] = _grow(old, base, "fresh")
            adapted[key] = f"{old.shape[0]} -> {base.shape[0]} classes: old class rows kept, new rows He-initialised"
    report = load_with_report(model, new_state, strict=True, source=source, adapted=adapted)
    model.load_report = report
    return model


def _check_only_heads_random(report: LoadReport) -> None:
    others = [k for k in report.random_init if not k.startswith("decoder.heads.")]
    if others:
        raise ValueError(f"the upstream weights do not cover the downstream network: {others[:8]} would stay at random init")


def _split_prompt(prompt: UniversalPrompt, num_frozen: int) -> PromptWithNewTasks:
    split = PromptWithNewTasks(prompt.config, num_frozen)
    split.load_state_dict(prompt.state_dict(), strict=True)
    return split.to(prompt.prompt.device)


# ---------------------------------------------------------------------------------------------------------------
# Freezing and parameter groups
# ---------------------------------------------------------------------------------------------------------------
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False


def _freeze_norm_stats(model: nn.Module, prefix: str = "", exclude: Sequence[str] = ()) -> list[str]:
    """Keep the running statistics of norm layers under ``prefix`` fixed, even after ``model.train()``."""
    hooks = model.__dict__.setdefault("_frozen_norm_hooks", {})
    names = []
    for name, m in model.named_modules():
        if name.startswith(prefix) and isinstance(m, _NORM_TYPES) and not name.startswith(tuple(exclude)) and name not in hooks:
            hooks[name] = m.register_forward_pre_hook(_keep_eval)
            m.eval()
            names.append(name)
    return names


def freeze_encoder(model: nn.Module, freeze: bool = True) -> list[str]:
    """Freeze (or unfreeze) the encoder: no gradients, and norm statistics fixed.

    Norm layers of the encoder are kept in eval mode through every later ``model.train()`` call (a forward
    pre-hook), so batch-norm running statistics cannot drift; UniSeg's instance norm has no running statistics,
    so for it this only matters with a ``norm=("batch", ...)`` config. The frozen names are appended to
    ``model.load_report.frozen`` when the model has a load report.

    Returns:
        the names of the parameters whose ``requires_grad`` changed.
    """
    if not hasattr(model, "encoder"):
        raise TypeError(f"freeze_encoder needs a model with an .encoder (UniSeg / UniSegBackbone), got {type(model).__name__}")
    changed = [f"encoder.{n}" for n, p in model.encoder.named_parameters() if p.requires_grad == freeze]
    for p in model.encoder.parameters():
        p.requires_grad_(not freeze)
    hooks = model.__dict__.setdefault("_frozen_norm_hooks", {})
    if freeze:
        _freeze_norm_stats(model, prefix="encoder.")
    else:
        modules = dict(model.named_modules())
        for name in [n for n in hooks if n.startswith("encoder.")]:
            hooks.pop(name).remove()
            modules[name].train(model.training)
    report = getattr(model, "load_report", None)
    if report is not None:
        frozen = list(getattr(report, "frozen", []))
        report.frozen = sorted(set(frozen) | set(changed)) if freeze else [k for k in frozen if k not in changed]
    logger.info("%s %d encoder parameters", "froze" if freeze else "unfroze", len(changed))
    return changed


def layer_groups(model: nn.Module) -> dict[str, int]:
    """Parameter name → layer id for layer-wise lr decay: stem, encoder stages, prompt, decoder stages, heads.

    Built from the model's timm-style ``group_matcher(coarse=True)`` extended by the prompt, the decoder stages
    and the heads, and resolved with :func:`timm.models.group_parameters`. The stem is layer 0, the heads are
    the last layer.
    """
    matcher: dict[str, Any] = dict(model.group_matcher(coarse=True)) if hasattr(model, "group_matcher") else {}
    matcher.update(prompt=r"^prompt\.", decoder=r"^decoder\.stages\.(\d+)", heads=r"^decoder\.heads\.")
    return group_parameters(model, matcher, reverse=True)


def param_groups(
    model: nn.Module,
    lr: float,
    layer_decay: float | None = None,
    weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups over the trainable parameters, one per layer (see :func:`layer_groups`).

    Args:
        lr: the learning rate of the last layer (the heads).
        layer_decay: with ``d``, layer ``i`` of ``n`` gets ``lr * d ** (n - 1 - i)`` (BEiT/timm layer-wise decay);
            ``None`` gives every group ``lr``.
        weight_decay: set on every group when given (the official recipe decays every parameter).

    Returns:
        a list of dicts with ``params``, ``lr``, ``lr_scale`` and ``name`` (plus ``weight_decay``), ready for
        ``torch.optim.SGD``; frozen parameters are left out.
    """
    ids = layer_groups(model)
    n = max(ids.values()) + 1
    groups: dict[int, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = ids[name]
        scale = 1.0 if layer_decay is None else float(layer_decay) ** (n - 1 - lid)
        g = groups.setdefault(lid, dict(params=[], param_names=[], lr=lr * scale, lr_scale=scale, name=f"layer_{lid}"))
        if weight_decay is not None:
            g["weight_decay"] = weight_decay
        g["params"].append(p)
        g["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    return [groups[k] for k in sorted(groups)]
