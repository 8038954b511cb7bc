"""The fine-tuning recipe as one JSON-serialisable dataclass.

Defaults are the official UniSeg downstream recipe (nnU-Net v1 ``nnUNetTrainerV2`` as ``UniSeg_Trainer_DS``
uses it): Dice + cross-entropy with deep supervision, SGD (momentum 0.99, Nesterov), lr 1e-2 with poly decay
(exponent 0.9), weight decay 3e-5, gradient-norm clip 12, 250 iterations x 100 epochs, patches with 1/3
foreground oversampling, rotation/scaling/mirroring/intensity augmentation (no elastic deformation), AMP on CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs besides the model and the data.

    Optimisation:
        epochs, iterations_per_epoch, batch_size: the run length (an epoch is a fixed number of iterations,
            as in nnU-Net, not a pass over the data).
        lr, momentum, nesterov, weight_decay: SGD settings; ``lr`` is the lr of the heads when ``layer_decay``
            is set (layer ``i`` of ``n`` gets ``lr * layer_decay ** (n - 1 - i)``).
        poly_exponent: ``lr_epoch = lr * (1 - epoch / epochs) ** poly_exponent`` (stepped once per epoch).
        grad_clip: max gradient norm (``None`` disables clipping).
        amp: mixed precision (only takes effect on CUDA).
    Loss:
        deep_supervision: train on every decoder scale with weights ``1/2**i``, the lowest scale dropped,
            normalised to sum 1.
        dice_weight, ce_weight: weights of the Dice and cross-entropy terms; ``batch_dice`` computes Dice over
            the whole batch (nnU-Net ``batch_dice``).
    Sampling and augmentation:
        patch_size: training patch ``(D, H, W)``; ``None`` takes ``model.config.patch_size`` (UniSeg models need
            exactly that size).
        oversample_foreground: fraction of patches centred on a random foreground voxel.
        augment: master switch; ``rotation_deg``/``rotation_prob``, ``scale_range``/``scale_prob``,
            ``mirror_axes``/``mirror_prob``, ``intensity_prob`` (brightness, contrast, gamma, noise),
            ``elastic`` (off in the official recipe; not implemented: must stay ``False``).
    Validation:
        val_every: validate every ``val_every`` epochs (and after the last).
        sw_overlap, mirror, sw_batch_size: sliding-window prediction settings.
    Run:
        output_dir: checkpoints (``checkpoint_latest.pt``, ``checkpoint_best.pt``), ``log.csv``, ``log.json``,
            ``curves.png``; ``None`` writes nothing.
        seed: seeds sampling, augmentation and (where deterministic) torch.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; ``None`` picks CUDA when available.
        progress: tqdm progress bars.
    """

    epochs: int = 100
    iterations_per_epoch: int = 250
    batch_size: int = 2
    lr: float = 1e-2
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float | None = 12.0
    layer_decay: float | None = None
    amp: bool = True
    deep_supervision: bool = True
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    batch_dice: bool = True
    patch_size: list[int] | None = None
    oversample_foreground: float = 1.0 / 3.0
    augment: bool = True
    rotation_deg: float = 30.0
    rotation_prob: float = 0.2
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.4])
    scale_prob: float = 0.2
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    mirror_prob: float = 0.5
    intensity_prob: float = 0.15
    elastic: bool = False
    val_every: int = 1
    sw_overlap: float = 0.5
    sw_batch_size: int = 1
    mirror: bool = False
    output_dir: str | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.patch_size is not None:
            self.patch_size = [int(p) for p in self.patch_size]
            if len(self.patch_size) != 3 or min(self.patch_size) < 1:
                raise ValueError(f"patch_size must be 3 positive ints (D, H, W) or None, got {self.patch_size}")
        self.scale_range = [float(s) for s in self.scale_range]
        self.mirror_axes = [int(a) for a in self.mirror_axes]
        checks = [
            (self.epochs >= 1 and self.iterations_per_epoch >= 1 and self.batch_size >= 1,
             f"epochs, iterations_per_epoch and batch_size must be >= 1, got {self.epochs}, {self.iterations_per_epoch}, {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0.0 <= self.oversample_foreground <= 1.0, f"oversample_foreground must be in [0, 1], got {self.oversample_foreground}"),
            (len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
             f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range}"),
            (all(a in (0, 1, 2) for a in self.mirror_axes), f"mirror_axes must be spatial axes 0, 1, 2, got {self.mirror_axes}"),
            (self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}"),
            (0.0 <= self.sw_overlap < 1.0, f"sw_overlap must be in [0, 1), got {self.sw_overlap}"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1] or null, got {self.layer_decay}"),
            (not self.elastic, "elastic deformation is off in the official recipe and not implemented here; set elastic=false"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        """Read a JSON file holding any subset of the fields (the rest keep the official defaults)."""
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of TrainConfig fields, found {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        return text

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
