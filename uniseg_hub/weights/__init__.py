"""Weights: everything about weights that needs no model class.

* :mod:`.registry` — the registry of named weights (package data in ``uniseg_hub/registry/``), download, sha256,
  cache (imports no torch).
* :mod:`.nnunet_v1` — the safe reader of official nnU-Net v1 ``.model`` + ``.model.pkl`` files (never unpickles code).
* :mod:`.safetensors_dir` — our ``save_pretrained`` folder: ``config.json`` + ``model.safetensors`` + model card.
* :mod:`.report` — :class:`LoadReport`: what a load matched, adapted, dropped or left at init.
* :mod:`.loader` — any weights → state dict + config, and the builder that takes the model class (never imports a
  model; the UniSeg family is bound in :mod:`uniseg_hub.hub`).
"""

from .loader import ModelFamily, build_and_load, convert_nnunet_v1, download, load_pretrained, load_state_and_config
from .nnunet_v1 import CheckpointError, config_from_plans, load_nnunet_v1_checkpoint, read_plans_pickle
from .registry import DEFAULT_PRETRAINED, REGISTRY_DIR, default_cache_dir, fetch, list_pretrained, registry_entry, sha256_file
from .report import LoadError, LoadReport
from .safetensors_dir import model_card, read_safetensors, save_folder

__all__ = [
    "ModelFamily", "build_and_load", "convert_nnunet_v1", "download", "load_pretrained", "load_state_and_config",
    "CheckpointError", "config_from_plans", "load_nnunet_v1_checkpoint", "read_plans_pickle",
    "DEFAULT_PRETRAINED", "REGISTRY_DIR", "default_cache_dir", "fetch", "list_pretrained", "registry_entry", "sha256_file",
    "LoadError", "LoadReport", "model_card", "read_safetensors", "save_folder",
]
