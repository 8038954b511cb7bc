"""Fine-tuning engine: the official UniSeg downstream recipe with exact resume.

:class:`TrainConfig` holds the recipe, :func:`finetune` runs it (alone or under ``torchrun``, see
:mod:`.distributed`), :func:`evaluate` scores whole volumes.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, GlobalBatchDiceCELoss, init_distributed
from .engine import TrainResult, evaluate, finetune, predict_volume
from .losses import DeepSupervisionLoss, deep_supervision_weights
from .metrics import segmentation_metrics
from .sampling import PatchSampler

__all__ = [
    "TrainConfig",
    "TrainResult",
    "finetune",
    "evaluate",
    "predict_volume",
    "DeepSupervisionLoss",
    "deep_supervision_weights",
    "segmentation_metrics",
    "PatchSampler",
    "save_checkpoint",
    "load_checkpoint",
    "init_distributed",
    "DistributedContext",
    "GlobalBatchDiceCELoss",
]
