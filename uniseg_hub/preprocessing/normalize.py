"""Per-channel intensity normalisation by modality: the schemes of :class:`~uniseg_hub.config.PreprocessingConfig`.

=================  ==========================================================================  =====================
scheme             what                                                                        origin
=================  ==========================================================================  =====================
``clip_rescale``   clip to ``[low, high]``, map linearly to ``[0, 1]``                          UniSeg upstream CT
``zscore``         ``(x - mean) / (sd + 1e-8)`` per image; with ``use_nonzero_mask`` the        nnU-Net v1 ``nonCT``
                   statistics come from the nonzero mask only and voxels outside are set to 0
``ct``             clip to ``[low, high]`` then ``(x - mean) / sd`` (data-set statistics);      nnU-Net v1 ``CT``
                   with ``use_nonzero_mask`` voxels outside the mask are set to 0
=================  ==========================================================================  =====================

The ``mask`` is the nonzero region resampled to the network grid (``seg[-1] >= 0`` in nnU-Net v1's
``GenericPreprocessor.resample_and_normalize``). Statistics and arithmetic are float64, the result float32.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..config import PreprocessingConfig

__all__ = ["normalize"]

_EPS = 1e-8  # nnU-Net v1: std + 1e-8 (v2: max(std, 1e-8))


def _zscore(x: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
    if inside is None:
        return (x - x.mean()) / (x.std(unbiased=False) + _EPS)
    out = torch.zeros_like(x)
    vals = x[inside]
    if vals.numel():
        out[inside] = (vals - vals.mean()) / (vals.std(unbiased=False) + _EPS)
    return out


def normalize(
    data: torch.Tensor, modalities: Sequence[str], config: PreprocessingConfig, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalise ``(C, Z, Y, X)`` channel by channel with the scheme of its modality (``config.scheme_for``).

    Args:
        data: ``(C, Z, Y, X)`` intensities (any float dtype; computed in float64).
        modalities: one modality name per channel.
        config: the preprocessing contract holding the schemes.
        mask: ``(Z, Y, X)`` bool nonzero region, needed by schemes with ``use_nonzero_mask``.

    Returns:
        ``(C, Z, Y, X)`` float32 on ``data``'s device.

    Example:
        >>> cfg = PreprocessingConfig(normalization={"CT": {"scheme": "ct", "mean": 50, "sd": 10, "low": 0, "high": 100}})
        >>> normalize(torch.tensor([[[[-20.0, 60.0, 300.0]]]]), ["CT"], cfg).flatten().tolist()
        [-5.0, 1.0, 5.0]
    """
    from monai.transforms import ScaleIntensityRange

    if data.ndim != 4:
        raise ValueError(f"normalize expects (C, Z, Y, X) data, got shape {tuple(data.shape)}")
    if len(modalities) != data.shape[0]:
        raise ValueError(f"{data.shape[0]} image channel(s) but {len(modalities)} modalities {list(modalities)}")
    if mask is not None:
        mask = torch.as_tensor(mask, device=data.device)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(data.shape[1:]):
            raise ValueError(f"mask must be a bool (Z, Y, X) = {tuple(data.shape[1:])} tensor, got {mask.dtype} {tuple(mask.shape)}")
    out = torch.empty(data.shape, dtype=torch.float32, device=data.device)
    for c, mod in enumerate(modalities):
        spec = config.scheme_for(mod)
        use_mask = bool(spec.get("use_nonzero_mask", False))
        if use_mask and mask is None:
            raise ValueError(f"the {spec['scheme']!r} scheme of modality {mod!r} uses the nonzero mask: pass mask=")
        if spec["scheme"] == "clip_rescale":
            tr = ScaleIntensityRange(a_min=spec["low"], a_max=spec["high"], b_min=0.0, b_max=1.0, clip=True)
            out[c] = torch.as_tensor(tr(data[c].to(torch.float32)))
            continue
        x = data[c].to(torch.float64)
        if spec["scheme"] == "zscore":
            y = _zscore(x, mask if use_mask else None)
        else:  # "ct"
            y = (x.clamp(spec["low"], spec["high"]) - spec["mean"]) / spec["sd"]
            if use_mask:
                y[~mask] = 0
        out[c] = y.to(torch.float32)
    return out
