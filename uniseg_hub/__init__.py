"""uniseg_hub: UniSeg (MICCAI 2023) as composable PyTorch modules and a pretrained backbone hub."""

from . import _hugepages

_hugepages.enable_by_default()  # before torch's first CPU allocation; opt out with THP_MEM_ALLOC_ENABLE=0

from . import _moved  # noqa: E402
from .config import PreprocessingConfig, TaskSpec, UniSegConfig, UPSTREAM_TASKS
from .models.decoder import SegmentationHeads, UniSegDecoder
from .models.encoder import UniSegEncoder
from .models.uniseg import (
    UniSeg,
    UniSegBackbone,
    checkpoint_filter_fn,
    create_model,
    list_models,
    official_key_map,
    to_official_state_dict,
)
from .models.prompt import UniversalPrompt
from .weights import CheckpointError, load_nnunet_v1_checkpoint
from .hub import download, from_pretrained, list_pretrained, load_state_and_config
from .weights.report import LoadError, LoadReport

__version__ = "0.1.0"

_moved.install()  # the pre-0.2 import paths (uniseg_hub.adapters, .perf, ...) still import, with a FutureWarning

__all__ = [
    "PreprocessingConfig", "TaskSpec", "UniSegConfig", "UPSTREAM_TASKS", "SegmentationHeads", "UniSegDecoder",
    "UniSegEncoder", "UniversalPrompt", "UniSeg", "UniSegBackbone", "checkpoint_filter_fn", "create_model",
    "list_models", "official_key_map", "to_official_state_dict", "CheckpointError", "load_nnunet_v1_checkpoint",
    "download", "from_pretrained", "list_pretrained", "load_state_and_config", "LoadError", "LoadReport",
]
