"""Readers of foreign checkpoint formats (never executing pickled code)."""

from .nnunet_v1 import CheckpointError, load_nnunet_v1_checkpoint, read_plans_pickle, config_from_plans
from .safetensors_dir import model_card, read_safetensors, save_folder

__all__ = ["CheckpointError", "load_nnunet_v1_checkpoint", "read_plans_pickle", "config_from_plans", "read_safetensors",
           "save_folder", "model_card"]
