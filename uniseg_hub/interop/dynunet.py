"""UniSeg backbones as MONAI ``DynUNet`` (and back): same kernels, strides and filters, the same weights.

:func:`to_dynunet` builds a :class:`monai.networks.nets.DynUNet` whose ``eval()`` logits equal the
:class:`~uniseg_hub.models.uniseg.UniSegBackbone`'s (float32 rounding: ≤ 1e-4 on the official downstream fixture), and
:func:`from_dynunet` goes the way back. What maps, block by block:

=====================================  =========================================================================
UniSegBackbone                         DynUNet
=====================================  =========================================================================
encoder stage 0 (one stem, 2 convs)    ``input_block`` (``UnetBasicBlock``: conv1/norm1, conv2/norm2)
encoder stages 1 … n-2                 ``downsamples[s-1]``
bottleneck (stage n-1)                 ``bottleneck``
decoder stage u (coarsest first)       ``upsamples[u]``: ``transp_conv`` (no bias) + ``conv_block``; its kernel is
                                       the deeper stage's, in both (``kernel_size[1:][::-1]``)
finest head                            ``output_block`` (bias set to zero)
coarser heads (deep supervision)       ``deep_supervision_heads`` with ``deep_supr_num = n - 2`` (all of them)
=====================================  =========================================================================

Conv biases: MONAI's block convs have none, ours do. Each of ours is followed by an instance norm, which removes
the per-channel mean of its input, so a per-channel constant cancels exactly: ``(x + b) - mean(x + b) =
x - mean(x)``, and the variance is unchanged; the biases are dropped (before a batch norm they move into its
``running_mean``, also exact). ``tests/test_interop_monai.py`` measures it.

Deep supervision: DynUNet computes every head at its own scale and keeps it in ``net.heads``; in training mode
it returns them nearest-upsampled and stacked, ``(B, 1 + deep_supr_num, K, D, H, W)``. Both are our
deep-supervision outputs (:func:`dynunet_outputs` reads the native-scale list, finest first).

Axes: ``axes="zyx"`` (default) keeps our ``(B, C, D, H, W) = (z, y, x)`` order; ``axes="xyz"`` gives a DynUNet
for MONAI-loaded arrays ``(B, C, X, Y, Z)`` (kernels, strides and every kernel tensor reversed — exact), so it
plugs into MONAI transforms and ``monai.inferers.sliding_window_inference`` without a permute.

What does not map: a prompt-driven :class:`~uniseg_hub.models.uniseg.UniSeg` (no prompt input in DynUNet: transfer it
with :func:`uniseg_hub.models.adapters.from_upstream` first), stems for other channel counts (DynUNet has one input
conv: choose with ``in_channels``), ``conv_per_stage != 2`` (``UnetBasicBlock`` has two convs), fewer than three
stages, and strides whose MONAI padding ``(k - s + 1) // 2`` differs from ours ``(k - 1) // 2``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, get_padding
from monai.networks.nets import DynUNet
from torch import nn

from ..config import UniSegConfig
from ..models.uniseg import UniSegBackbone
from ..weights.report import load_with_report
from .common import BackboneLayout, absorb_conv_bias, check_backbone, resolve_in_channels, sub_state

__all__ = ["to_dynunet", "from_dynunet", "dynunet_kwargs", "dynunet_outputs", "save_dynunet_bundle",
           "load_dynunet_bundle", "Axes"]

logger = logging.getLogger(__name__)

Axes = Literal["zyx", "xyz"]


def _axes(axes: str) -> bool:
    """True when the spatial axes are reversed (MONAI's ``xyz``)."""
    if axes not in ("zyx", "xyz"):
        raise ValueError(f"axes must be 'zyx' (uniseg_hub / nnU-Net arrays) or 'xyz' (MONAI arrays), got {axes!r}")
    return axes == "xyz"


def _flip_kernel(w: torch.Tensor, flip: bool) -> torch.Tensor:
    """A conv / transposed-conv weight ``(O, I, kD, kH, kW)`` with its spatial axes reversed when ``flip``."""
    return w.permute(0, 1, 4, 3, 2).contiguous() if flip else w


def _check_mappable(config: UniSegConfig) -> None:
    n = config.num_stages
    if n < 3:
        raise ValueError(f"a DynUNet needs at least 3 stages (input block, one downsample, bottleneck); this network has {n}")
    if config.conv_per_stage != 2:
        raise ValueError(
            f"DynUNet blocks (UnetBasicBlock) have exactly two convs per stage; this network has conv_per_stage="
            f"{config.conv_per_stage}"
        )
    for s, (k, st) in enumerate(zip(config.conv_kernel_sizes, config.stage_strides)):
        theirs = get_padding(k, st)
        theirs = [theirs] * 3 if isinstance(theirs, int) else list(theirs)
        ours = [(kk - 1) // 2 for kk in k]
        if theirs != ours:
            raise ValueError(
                f"stage {s}: kernel {k} with stride {st} is padded {ours} here but {theirs} by MONAI's "
                "get_padding ((k - s + 1) // 2); the outputs would differ in size"
            )


def dynunet_kwargs(config: UniSegConfig, in_channels: int, axes: Axes = "zyx", deep_supervision: bool = False) -> dict[str, Any]:
    """The JSON-friendly ``DynUNet(**kwargs)`` arguments of a backbone config (for one stem, in ``axes`` order)."""
    _check_mappable(config)
    flip = _axes(axes)

    def order(v: Sequence[int]) -> list[int]:
        return [int(i) for i in (list(v)[::-1] if flip else v)]

    n = config.num_stages
    return dict(
        spatial_dims=3,
        in_channels=int(in_channels),
        out_channels=int(config.num_classes),
        kernel_size=[order(k) for k in config.conv_kernel_sizes],
        strides=[order(s) for s in config.stage_strides],
        upsample_kernel_size=[order(s) for s in config.pool_op_kernel_sizes],
        filters=list(config.stage_channels),
        norm_name=[config.norm[0], dict(config.norm[1])],
        act_name=[config.act[0], dict(config.act[1])],
        deep_supervision=bool(deep_supervision),
        deep_supr_num=n - 2 if deep_supervision else 1,
        res_block=False,
        trans_bias=False,
    )


def _build(kwargs: dict[str, Any]) -> DynUNet:
    kw = dict(kwargs)
    kw["norm_name"], kw["act_name"] = tuple(kw["norm_name"]), tuple(kw["act_name"])
    return DynUNet(**kw)


_Pairs = list[list[tuple[nn.Conv3d, nn.Module]]]


def _dyn_layers(net: DynUNet) -> tuple[_Pairs, list[nn.ConvTranspose3d], _Pairs, list[nn.Conv3d | None]]:
    """DynUNet's (encoder convs+norms per stage, transposed convs, decoder convs+norms, heads coarsest first)."""
    def pairs(block: UnetBasicBlock) -> list[tuple[nn.Conv3d, nn.Module]]:
        return [(block.conv1.conv, block.norm1), (block.conv2.conv, block.norm2)]

    encoder = [pairs(b) for b in [net.input_block, *net.downsamples, net.bottleneck]]
    upsample = [up.transp_conv.conv for up in net.upsamples]
    decoder = [pairs(up.conv_block) for up in net.upsamples]
    ds = list(net.deep_supervision_heads) if net.deep_supervision else []
    heads: list[nn.Conv3d | None] = [None] * len(net.upsamples)
    heads[-1] = net.output_block.conv.conv
    for i, h in enumerate(ds):  # deep_supervision_heads[i] sits on level i + 1
        heads[len(heads) - 2 - i] = h.conv.conv
    return encoder, upsample, decoder, heads


@torch.no_grad()
def to_dynunet(model: nn.Module, in_channels: int | None = None, *, axes: Axes = "zyx",
               deep_supervision: bool | None = None) -> DynUNet:
    """A MONAI ``DynUNet`` holding the weights of a :class:`~uniseg_hub.models.uniseg.UniSegBackbone`.

    Args:
        model: any downstream backbone (``from_upstream(..., strategy="official")``, a fine-tuned model,
            ``from_pretrained`` of a backbone checkpoint). A prompt-driven ``UniSeg`` raises: transfer it first.
        in_channels: the stem to export (DynUNet has one input conv); default: the task's modality count
            (``config.tasks[0]``), else the only stem.
        axes: ``"zyx"`` for our ``(B, C, D, H, W)`` tensors, ``"xyz"`` for MONAI-loaded ``(B, C, X, Y, Z)`` ones.
        deep_supervision: build DynUNet's deep-supervision heads (every coarser head of ours,
            ``deep_supr_num = n - 2``); default: the model's setting.

    Returns:
        the DynUNet (float32, CPU, in ``model``'s train/eval mode). Its ``eval()`` logits equal ``model``'s.

    Example:
        >>> net = to_dynunet(from_upstream("uniseg-demo", num_classes=3)).eval()    # doctest: +SKIP
        >>> net(torch.zeros(1, 1, 32, 48, 32)).shape                                       # doctest: +SKIP
        torch.Size([1, 3, 32, 48, 32])
    """
    model = check_backbone(model, "a DynUNet")
    cfg: UniSegConfig = model.config
    c_in = resolve_in_channels(cfg, in_channels, "a DynUNet")
    ds = model.deep_supervision if deep_supervision is None else bool(deep_supervision)
    kwargs = dynunet_kwargs(cfg, c_in, axes, ds)
    flip = _axes(axes)
    net = _build(kwargs)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    ours = BackboneLayout.of(cfg, c_in)
    enc, ups, dec, heads = _dyn_layers(net)

    def put(dst_conv: nn.Conv3d, dst_norm: nn.Module, conv: str, norm: str) -> None:
        dst_conv.weight.copy_(_flip_kernel(state[f"{conv}.weight"], flip))
        bias = state.get(f"{conv}.bias")
        norm_state = sub_state(state, norm)
        if bias is not None:
            norm_state = absorb_conv_bias(bias, dst_norm, norm_state, conv)
        dst_norm.load_state_dict(norm_state, strict=True)

    for theirs, mine in zip(enc + dec, ours.encoder + ours.decoder):
        for (dst_conv, dst_norm), (conv, norm) in zip(theirs, mine):
            put(dst_conv, dst_norm, conv, norm)
    for dst, key in zip(ups, ours.upsample):
        dst.weight.copy_(_flip_kernel(state[key], flip))
    for dst, key in zip(heads, ours.heads):
        if dst is not None:
            dst.weight.copy_(state[key])
            dst.bias.zero_()
    logger.info("DynUNet from %s: %d stages, filters %s, %d input channel(s), axes %s, deep supervision %s",
                cfg.name, cfg.num_stages, cfg.stage_channels, c_in, axes, ds)
    return net.train(model.training)


def dynunet_outputs(net: DynUNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Every head's logits at its own scale, finest first (our deep-supervision list), from one forward.

    DynUNet keeps the coarser heads' outputs in ``net.heads`` (in eval mode too); without deep supervision the
    list is the finest logits only.
    """
    out = net(x)
    finest = out[:, 0] if out.dim() == x.dim() + 1 else out
    return [finest, *(list(net.heads) if net.deep_supervision else [])]


def _as3(v: Any) -> list[int]:
    return [int(v)] * 3 if isinstance(v, int) else [int(i) for i in v]


def _spec(v: Any) -> list:
    name, kw = (v, {}) if isinstance(v, str) else (v[0], dict(v[1]))
    return [str(name).lower(), kw]


def _config_of(net: DynUNet, flip: bool, patch_size: Sequence[int] | None) -> UniSegConfig:
    """A backbone config with DynUNet's kernels, strides and filters (``zyx`` order), with clear errors."""
    if net.spatial_dims != 3:
        raise ValueError(f"only 3D DynUNets map onto UniSeg, got spatial_dims={net.spatial_dims}")
    if net.conv_block is not UnetBasicBlock:
        raise ValueError("a residual DynUNet (res_block=True) has no UniSeg counterpart (plain conv-norm-act blocks)")
    if net.dropout not in (None, 0, 0.0):
        raise ValueError(f"DynUNet dropout={net.dropout!r}: UniSeg blocks have no dropout")
    order = (lambda v: _as3(v)[::-1]) if flip else _as3
    kernels = [order(k) for k in net.kernel_size]
    strides = [order(s) for s in net.strides]
    ups = [order(s) for s in net.upsample_kernel_size]
    if strides[0] != [1, 1, 1]:
        raise ValueError(f"the input block of this DynUNet has stride {strides[0]}; UniSeg's first stage has stride 1")
    if ups != strides[1:]:
        raise ValueError(f"upsample_kernel_size {ups} must equal strides[1:] {strides[1:]} (UniSeg's transposed convs)")
    filters = [int(f) for f in net.filters]
    base, top = filters[0], max(filters)
    if filters != [min(base * 2**i, top) for i in range(len(filters))]:
        raise ValueError(f"filters {filters} do not follow UniSeg's min(base * 2**stage, max) rule")
    divisor = [1, 1, 1]
    for s in strides[1:]:
        divisor = [d * x for d, x in zip(divisor, s)]
    return UniSegConfig(
        patch_size=[int(p) for p in patch_size] if patch_size is not None else [2 * d for d in divisor],
        pool_op_kernel_sizes=strides[1:], conv_kernel_sizes=kernels, base_num_features=base, max_num_features=top,
        conv_per_stage=2, input_channels=[int(net.in_channels)], num_classes=int(net.out_channels), num_tasks=0,
        norm=_spec(net.norm_name), act=_spec(net.act_name), deep_supervision=bool(net.deep_supervision),
        name="dynunet", provenance={"converted_from": "monai.networks.nets.DynUNet"},
    )


@torch.no_grad()
def from_dynunet(dynunet: DynUNet, config: UniSegConfig | None = None, *, axes: Axes = "zyx",
                 patch_size: Sequence[int] | None = None) -> UniSegBackbone:
    """The way back: a :class:`~uniseg_hub.models.uniseg.UniSegBackbone` holding a DynUNet's weights.

    Args:
        dynunet: a ``DynUNet`` with UniSeg's structure (plain blocks, no dropout, filters ``min(base·2^s, max)``,
            ``upsample_kernel_size == strides[1:]``, output and transposed-conv biases zero — e.g. one made by
            :func:`to_dynunet`, fine-tuned with ``net.output_block.conv.conv.bias.requires_grad_(False)``).
        config: the backbone config to use (e.g. the original model's, to keep its tasks and preprocessing
            contract); checked against the DynUNet. Its stems are reduced to DynUNet's one input conv. ``None``:
            derived from the DynUNet (default preprocessing contract; ``patch_size`` as given, else twice the
            total stride).
        axes: the DynUNet's axis order (``"xyz"`` for one made with ``to_dynunet(..., axes="xyz")``).
        patch_size: the training patch ``(D, H, W)`` when ``config`` is ``None``.

    Returns:
        the backbone (DynUNet's train/eval mode) with ``load_report``: our conv biases are set to zero (adapted;
        exact before instance norm), coarser heads a DynUNet without deep supervision lacks stay random.
    """
    if not isinstance(dynunet, DynUNet):
        raise TypeError(f"from_dynunet needs a monai.networks.nets.DynUNet, got {type(dynunet).__name__}")
    flip = _axes(axes)
    derived = _config_of(dynunet, flip, patch_size)
    if config is None:
        cfg = derived
    else:
        if not config.is_backbone:
            raise ValueError("config is a prompt-driven UniSeg config (num_tasks > 0); a DynUNet holds a prompt-free backbone")
        cfg = config.replace(input_channels=derived.input_channels, deep_supervision=derived.deep_supervision)
        for field in ("conv_kernel_sizes", "pool_op_kernel_sizes", "stage_channels", "num_classes", "conv_per_stage"):
            if getattr(cfg, field) != getattr(derived, field):
                raise ValueError(f"config.{field} = {getattr(cfg, field)} but the DynUNet has {getattr(derived, field)}")
        for field in ("norm", "act"):
            if getattr(cfg, field)[0] != getattr(derived, field)[0]:
                raise ValueError(f"config.{field} is {getattr(cfg, field)[0]!r} but the DynUNet uses {getattr(derived, field)[0]!r}")
    enc, ups, dec, heads = _dyn_layers(dynunet)
    for name, conv in [("output_block", heads[-1]), *[(f"upsamples.{u}.transp_conv", c) for u, c in enumerate(ups)],
                       *[(f"deep supervision head {u}", h) for u, h in enumerate(heads[:-1]) if h is not None]]:
        if conv.bias is not None and bool((conv.bias != 0).any()):
            raise ValueError(
                f"DynUNet {name} has a nonzero bias (max |b| = {float(conv.bias.abs().max()):.3g}); UniSeg's heads and "
                "transposed convs have none, so these weights would not reproduce the network. Fine-tune with those "
                "biases frozen at zero (to_dynunet sets them to zero; bias.requires_grad_(False))"
            )
    c_in = cfg.input_channels[0]
    layout = BackboneLayout.of(cfg, c_in)
    state: dict[str, torch.Tensor] = {}
    adapted: dict[str, str] = {}
    for theirs, mine in zip(enc + dec, layout.encoder + layout.decoder):
        for (src_conv, src_norm), (conv, norm) in zip(theirs, mine):
            w = _flip_kernel(src_conv.weight.detach().float().cpu(), flip)
            state[f"{conv}.weight"] = w
            state[f"{conv}.bias"] = torch.zeros(w.shape[0])
            adapted[f"{conv}.bias"] = "zero (DynUNet convs have no bias; exact before instance norm)"
            for k, v in src_norm.state_dict().items():
                state[f"{norm}.{k}"] = v.detach().cpu().clone()
    for src, key in zip(ups, layout.upsample):
        state[key] = _flip_kernel(src.weight.detach().float().cpu(), flip)
    for src, key in zip(heads, layout.heads):
        if src is not None:
            state[key] = src.weight.detach().float().cpu().clone()
    model = UniSegBackbone(copy.deepcopy(cfg))
    report = load_with_report(model, state, strict=False, source="monai DynUNet", adapted=adapted)
    report.raise_for_errors()
    missing = [k for k in report.random_init if not k.startswith("decoder.heads.")]
    if missing:
        raise ValueError(f"the DynUNet does not provide {missing[:4]} (config.norm {cfg.norm} vs the DynUNet's "
                         f"{list(_spec(dynunet.norm_name))}?)")
    model.load_report = report
    return model.train(dynunet.training)


# ---------------------------------------------------------------------------------------------------------------
# A MONAI bundle-style folder
# ---------------------------------------------------------------------------------------------------------------
def save_dynunet_bundle(model: nn.Module, folder: str | os.PathLike, in_channels: int | None = None, *,
                        axes: Axes = "zyx", check: bool = True, atol: float = 1e-4) -> tuple[Path, float | None]:
    """Write a backbone as a MONAI bundle-style folder holding a DynUNet.

    ``configs/inference.json`` has the ``network_def`` (``{"_target_": "DynUNet", ...}``, what
    ``monai.bundle.ConfigParser`` instantiates) and ``network``; ``configs/metadata.json`` the bundle metadata
    (``network_data_format``: channels, patch, classes); ``models/model.pt`` the DynUNet state dict. Read it back
    with :func:`load_dynunet_bundle`. With ``check`` the DynUNet is compared with ``model`` on a random batch.

    Returns:
        ``(folder, max abs logit difference or None)``.
    """
    model = check_backbone(model, "a DynUNet")
    cfg: UniSegConfig = model.config
    c_in = resolve_in_channels(cfg, in_channels, "a DynUNet")
    flip = _axes(axes)
    net = to_dynunet(model, c_in, axes=axes, deep_supervision=False).eval()
    diff = None
    if check:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, c_in, *[2 * d for d in cfg.divisor], generator=g)
        ref = copy.deepcopy(model).float().cpu().eval()
        ref.set_deep_supervision(False)
        with torch.no_grad():
            got = net(x.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2) if flip else net(x)
            diff = float((got - ref(x)).abs().max())
        if not diff <= atol:
            raise ValueError(f"the DynUNet differs from the UniSeg backbone by {diff:.3g} (expected ≤ {atol})")
    import monai

    out = Path(folder)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "models" / "model.pt")
    spec = cfg.task_spec()
    spatial = list(cfg.patch_size)[::-1] if flip else list(cfg.patch_size)
    inference = {
        "imports": ["$import torch"],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "DynUNet", **dynunet_kwargs(cfg, c_in, axes)},
        "network": "$@network_def.to(@device)",
        "uniseg_hub": {"axes": axes, "config": cfg.to_dict()},
    }
    metadata = {
        "version": "0.1.0",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "name": f"{cfg.name} (UniSeg backbone as DynUNet)",
        "task": spec.name if spec is not None else cfg.name,
        "description": "A UniSeg backbone exported by uniseg_hub as monai.networks.nets.DynUNet. Inputs follow the "
                       f"weights' preprocessing contract (spacing {cfg.preprocessing.spacing} mm as z, y, x; "
                       f"normalisation {cfg.preprocessing.normalization}); tensor axes {axes}.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": c_in, "spatial_shape": spatial, "dtype": "float32",
                                 "is_patch_data": True,
                                 "channel_def": {str(i): m for i, m in enumerate(spec.modalities)} if spec else {}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": cfg.num_classes,
                                 "spatial_shape": spatial, "dtype": "float32", "is_patch_data": True,
                                 "channel_def": {"0": "background", **{str(c): n for c, n in
                                                 enumerate(spec.class_names, start=1)}} if spec else {}}},
        },
    }
    for name, data in (("inference.json", inference), ("metadata.json", metadata)):
        (out / "configs" / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote DynUNet bundle %s (%d input channel(s), %d classes, axes %s)", out, c_in, cfg.num_classes, axes)
    return out, diff


def load_dynunet_bundle(folder: str | os.PathLike) -> DynUNet:
    """The DynUNet of a :func:`save_dynunet_bundle` folder, built by ``monai.bundle.ConfigParser`` (eval mode, CPU)."""
    from monai.bundle import ConfigParser

    folder = Path(folder)
    parser = ConfigParser()
    parser.read_config(folder / "configs" / "inference.json")
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()
