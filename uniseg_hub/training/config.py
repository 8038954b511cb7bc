"""The fine-tuning recipe as JSON-serialisable dataclasses: :class:`TrainConfig` and its :class:`AugmentationConfig`.

Defaults are the official UniSeg downstream recipe exactly as the official trainer runs it (``UniSeg_Trainer_DS``,
an nnU-Net v1 ``nnUNetTrainerV2``; values read off the live official objects, see
``tests/fixtures/train_step/train_step.json``):

* 100 epochs x 250 iterations, batch 2; SGD (momentum 0.99, Nesterov, dampening 0) over every parameter in one
  group, weight decay 3e-5 (coupled L2), lr ``0.01 * (1 - epoch / 100) ** 0.9`` set once per epoch;
  gradient-norm clip 12; mixed precision on CUDA;
* loss: cross-entropy + soft Dice (batch Dice, smooth 1e-5, background dropped, absent classes counted), summed
  over the deep-supervision outputs with weights ``[8, 4, 2, 1, 0] / 15`` (the zero-weight output is skipped,
  so its head gets no gradient and no weight decay); targets downsampled the nnU-Net way; reported in
  nnU-Net's convention (``CE - Dice``: the loss can be negative);
* data: nnU-Net v1 ``DataLoader3D`` patches (``oversample_foreground_percent`` 0.33 applied per batch position,
  an oversized sampling patch for rotation/scaling) and the ``moreDA`` augmentation of
  ``default_3D_augmentation_params`` (:class:`AugmentationConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..jsonconfig import ConfigError, JsonConfig

__all__ = ["TrainConfig", "AugmentationConfig"]


@dataclass
class AugmentationConfig(JsonConfig):
    """nnU-Net v1's ``moreDA`` augmentation as ``nnUNetTrainerV2`` configures it (the official downstream values).

    Spatial (batchgenerators ``SpatialTransform`` on the oversized sampling patch, centre crop to the training patch):
        rotation_deg: rotation angles are drawn uniformly from ``[-rotation_deg, rotation_deg]`` per axis (30°).
        p_rot: probability per sample of rotating (0.2); ``rotation_p_per_axis``: of rotating each axis then (1).
        scale_range, p_scale: isotropic scaling of the sampling grid (0.7-1.4, p 0.2): half the scaled samples
            draw from ``[low, 1)``, half from ``[1, high]``; ``independent_scale_per_axis`` draws one per axis.
        do_elastic: elastic deformation (off in the official recipe; not implemented: must stay ``False``).
        order_data, order_seg: interpolation order of images (3: cubic B-spline) and label maps (1: linear on
            one-hot maps).
    Intensity (per sample, in this order):
        p_noise / noise_std: Gaussian noise, sd drawn from ``[0, noise_std]`` (0.1, 0.1).
        p_blur / blur_sigma / blur_p_per_channel: Gaussian blur (0.2, 0.5-1, each channel with p 0.5).
        p_brightness / brightness_range: multiplicative brightness per channel (0.15, 0.75-1.25).
        p_contrast / contrast_range: contrast around the mean, range preserved (0.15, 0.75-1.25).
        p_lowres / lowres_zoom / lowres_p_per_channel: simulated low resolution (0.25, zoom 0.5-1, p 0.5 per
            channel; nearest down, cubic up).
        p_gamma_inverted, p_gamma / gamma_range / gamma_retain_stats: gamma on the inverted image (0.1), then
            gamma (0.3), gamma 0.7-1.5 (half below 1), mean and sd kept.
    Mirroring:
        mirror_axes, p_mirror: each listed spatial axis (0 = D, 1 = H, 2 = W) is flipped with probability 0.5.
    """

    rotation_deg: float = 30.0
    p_rot: float = 0.2
    rotation_p_per_axis: float = 1.0
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.4])
    p_scale: float = 0.2
    independent_scale_per_axis: bool = False
    do_elastic: bool = False
    order_data: int = 3
    order_seg: int = 1
    p_noise: float = 0.1
    noise_std: float = 0.1
    p_blur: float = 0.2
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.0])
    blur_p_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    p_contrast: float = 0.15
    contrast_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    p_lowres: float = 0.25
    lowres_zoom: list[float] = field(default_factory=lambda: [0.5, 1.0])
    lowres_p_per_channel: float = 0.5
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: list[float] = field(default_factory=lambda: [0.7, 1.5])
    gamma_retain_stats: bool = True
    mirror_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    p_mirror: float = 0.5

    def __post_init__(self) -> None:
        self.check_types()
        probs = ("p_rot", "rotation_p_per_axis", "p_scale", "p_noise", "p_blur", "blur_p_per_channel", "p_brightness",
                 "p_contrast", "p_lowres", "lowres_p_per_channel", "p_gamma_inverted", "p_gamma", "p_mirror")
        for name in probs:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"AugmentationConfig.{name} is a probability and must be in [0, 1], got {v}")
        for name in ("scale_range", "blur_sigma", "brightness_range", "contrast_range", "lowres_zoom", "gamma_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not (math.isfinite(lo_hi[0]) and math.isfinite(lo_hi[1])) or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"AugmentationConfig.{name} must be [low, high] with 0 < low <= high, got {lo_hi}")
        if not 0 <= self.rotation_deg <= 180:
            raise ConfigError(f"AugmentationConfig.rotation_deg must be in [0, 180], got {self.rotation_deg}")
        if not 0 <= self.noise_std < math.inf:
            raise ConfigError(f"AugmentationConfig.noise_std must be >= 0, got {self.noise_std}")
        if self.lowres_zoom[1] > 1:
            raise ConfigError(f"AugmentationConfig.lowres_zoom must lie in (0, 1], got {self.lowres_zoom}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes) or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ConfigError(f"AugmentationConfig.mirror_axes must be distinct spatial axes among 0, 1, 2, got {self.mirror_axes}")
        if self.order_data not in (0, 1, 3) or self.order_seg not in (0, 1):
            raise ConfigError(f"AugmentationConfig: order_data must be 0, 1 or 3 and order_seg 0 or 1, got {self.order_data}, {self.order_seg}")
        if self.do_elastic:
            raise ConfigError("AugmentationConfig.do_elastic: elastic deformation is off in the official recipe and "
                              "not implemented here; set do_elastic=false")

    @property
    def spatial(self) -> bool:
        """Whether rotation or scaling can happen (then patches are sampled larger and cropped after the transform)."""
        return (self.p_rot > 0 and self.rotation_deg > 0) or (self.p_scale > 0 and tuple(self.scale_range) != (1.0, 1.0))


@dataclass
class TrainConfig(JsonConfig):
    """Everything a fine-tuning run needs besides the model and the data (defaults: the official recipe).

    Optimisation:
        epochs, iterations_per_epoch, batch_size: the run length (an epoch is a fixed number of iterations,
            as in nnU-Net, not a pass over the data).
        lr, momentum, nesterov, weight_decay: SGD settings; ``lr`` is the lr of the heads when ``layer_decay``
            is set (layer ``i`` of ``n`` gets ``lr * layer_decay ** (n - 1 - i)``).
        poly_exponent: ``lr_epoch = lr * (1 - epoch / epochs) ** poly_exponent``, set once at the start of each epoch.
        grad_clip: max gradient norm (``None`` disables clipping).
        layer_decay: layer-wise lr decay (off: one parameter group, as the official trainer).
        amp: mixed precision (only takes effect on CUDA).
    Loss:
        deep_supervision: train on every decoder scale (weights ``1/2**i``, the lowest scale 0, normalised).
        dice_weight, ce_weight: weights of the Dice and cross-entropy terms; ``batch_dice`` forms Dice over the
            whole batch (nnU-Net ``batch_dice``); ``dice_smooth`` is nnU-Net's ``smooth``.
    Data:
        patch_size: training patch ``(D, H, W)``; ``None`` takes ``model.config.patch_size`` (UniSeg models need
            exactly that size).
        oversample_foreground: nnU-Net's ``oversample_foreground_percent``: the last
            ``B - round(B * (1 - p))`` positions of every batch of ``B`` are centred on foreground.
        augment: master switch of :attr:`augmentation` (off: plain random patches of the training size).
    Validation:
        val_every: validate every ``val_every`` epochs on the preprocessed validation arrays (sliding window with
            ``sw_overlap``, ``sw_batch_size``, ``mirror``: a cheap setting). The final validation runs the
            predictor with its default settings on the raw validation files (see :func:`finetune`).
    Run:
        output_dir: checkpoints, logs, curves and the model folders ``final/`` and ``best/``; ``None`` writes nothing.
        seed: every random draw of the run (new heads when the CLI builds the model, sampling, augmentation).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; ``None`` picks CUDA when available.
        progress: tqdm progress bars.
        channels_last, grad_checkpointing: the lean training settings of
            :func:`uniseg_hub.models.perf.optimize_for_training` (same results; faster / less memory, see benchmarks).
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
    dice_smooth: float = 1e-5
    patch_size: list[int] | None = None
    oversample_foreground: float = 0.33
    augment: bool = True
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    val_every: int = 1
    sw_overlap: float = 0.5
    sw_batch_size: int = 1
    mirror: bool = False
    output_dir: str | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = True
    channels_last: bool = False
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.check_types()
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.iterations_per_epoch >= 1, f"iterations_per_epoch must be >= 1, got {self.iterations_per_epoch}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (math.isfinite(self.poly_exponent) and self.poly_exponent >= 0, f"poly_exponent must be >= 0, got {self.poly_exponent}"),
            (self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0),
             f"grad_clip must be > 0 or null, got {self.grad_clip}"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1] or null, got {self.layer_decay}"),
            (self.dice_weight >= 0 and self.ce_weight >= 0 and self.dice_weight + self.ce_weight > 0,
             f"dice_weight and ce_weight must be >= 0 and not both 0, got {self.dice_weight}, {self.ce_weight}"),
            (math.isfinite(self.dice_smooth) and self.dice_smooth >= 0, f"dice_smooth must be >= 0, got {self.dice_smooth}"),
            (self.patch_size is None or (len(self.patch_size) == 3 and min(self.patch_size) >= 1),
             f"patch_size must be 3 positive ints (D, H, W) or null, got {self.patch_size}"),
            (0.0 <= self.oversample_foreground <= 1.0, f"oversample_foreground must be in [0, 1], got {self.oversample_foreground}"),
            (self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}"),
            (0.0 <= self.sw_overlap < 1.0, f"sw_overlap must be in [0, 1), got {self.sw_overlap}"),
            (self.sw_batch_size >= 1, f"sw_batch_size must be >= 1, got {self.sw_batch_size}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"TrainConfig.{msg}")

    def poly_lr(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based): nnU-Net's ``poly_lr(epoch, epochs, lr, poly_exponent)``."""
        return self.lr * (1 - epoch / self.epochs) ** self.poly_exponent

    @classmethod
    def from_file(cls, path, **overrides) -> "TrainConfig":
        """Read a JSON file holding any subset of the fields (the rest keep the official defaults); ``overrides``
        that are not ``None`` win over the file."""
        base = cls.from_json(path)
        return base.replace(**{k: v for k, v in overrides.items() if v is not None}) if overrides else base
