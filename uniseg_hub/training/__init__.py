"""Fine-tuning: the official UniSeg downstream recipe, proven step for step against the official trainer.

:class:`TrainConfig` (+ :class:`AugmentationConfig`) holds the recipe, :class:`Trainer` runs one official
iteration at a time, :func:`finetune` is the front door (data sampling, augmentation, validation, checkpoints,
exact resume, the final model folders; alone or under ``torchrun``, see :mod:`.distributed`), :func:`evaluate`
scores whole volumes.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import AugmentationConfig, TrainConfig
from .distributed import DistributedContext, init_distributed
from .engine import TrainResult, check_run_folder, finetune
from .losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_labels
from .metrics import segmentation_metrics
from .sampling import PatchSampler
from .trainer import Trainer
from .validation import evaluate, predict_volume, validate_with_predictor

__all__ = [
    "TrainConfig",
    "AugmentationConfig",
    "Trainer",
    "TrainResult",
    "finetune",
    "check_run_folder",
    "evaluate",
    "predict_volume",
    "validate_with_predictor",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "deep_supervision_weights",
    "downsample_labels",
    "segmentation_metrics",
    "PatchSampler",
    "save_checkpoint",
    "load_checkpoint",
    "init_distributed",
    "DistributedContext",
]
