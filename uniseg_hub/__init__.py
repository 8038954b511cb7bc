"""uniseg_hub: UniSeg (MICCAI 2023) as composable PyTorch modules and a pretrained backbone hub."""

from .config import PreprocessingConfig, TaskSpec, UniSegConfig, UPSTREAM_TASKS
from .decoder import SegmentationHeads, UniSegDecoder
from .encoder import UniSegEncoder
from .model import (
    UniSeg,
    UniSegBackbone,
    checkpoint_filter_fn,
    create_model,
    list_models,
    official_key_map,
    to_official_state_dict,
)
from .prompt import UniversalPrompt
from .formats import CheckpointError, load_nnunet_v1_checkpoint
from .hub import download, from_pretrained, list_pretrained, load_state_and_config
from .report import LoadError, LoadReport

__version__ = "0.1.0"
