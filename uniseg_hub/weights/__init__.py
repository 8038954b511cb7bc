"""Weights: the registry of named weights with its downloads (:mod:`.registry`, no models) and the loader that
turns any weights into a state dict + config and builds a given model class (:mod:`.loader`, never imports a
model). The user-facing entry points (auto-class ``from_pretrained``, ``download``, ``convert_nnunet_v1``,
torch.hub) bind the UniSeg model family in :mod:`uniseg_hub.hub`.
"""

from .loader import ModelFamily, build_and_load, convert_nnunet_v1, download, load_pretrained, load_state_and_config
from .registry import DEFAULT_PRETRAINED, REGISTRY_DIR, default_cache_dir, fetch, list_pretrained, registry_entry, sha256_file

__all__ = [
    "ModelFamily", "build_and_load", "convert_nnunet_v1", "download", "load_pretrained", "load_state_and_config",
    "DEFAULT_PRETRAINED", "REGISTRY_DIR", "default_cache_dir", "fetch", "list_pretrained", "registry_entry", "sha256_file",
]
