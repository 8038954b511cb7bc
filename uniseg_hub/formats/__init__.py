"""Readers of foreign checkpoint formats (never executing pickled code)."""

from .nnunet_v1 import CheckpointError, load_nnunet_v1_checkpoint, read_plans_pickle, config_from_plans

__all__ = ["CheckpointError", "load_nnunet_v1_checkpoint", "read_plans_pickle", "config_from_plans"]
