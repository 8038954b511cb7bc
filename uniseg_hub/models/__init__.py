"""The networks, built from a :class:`~uniseg_hub.config.UniSegConfig`: layers → encoder, prompt, decoder → the
two models (:mod:`.uniseg`), plus what acts on built models: transfer to downstream tasks (:mod:`.adapters`),
output-preserving speed-ups (:mod:`.perf`) and the one module-replacement helper both use (:mod:`.surgery`)."""

from .decoder import SegmentationHeads, UniSegDecoder
from .encoder import UniSegEncoder
from .prompt import UniversalPrompt
from .uniseg import (
    UNISEG_FAMILY,
    UniSeg,
    UniSegBackbone,
    checkpoint_filter_fn,
    create_model,
    list_models,
    model_class_for,
    official_key_map,
    to_official_state_dict,
)

__all__ = [
    "SegmentationHeads", "UniSegDecoder", "UniSegEncoder", "UniversalPrompt", "UNISEG_FAMILY", "UniSeg",
    "UniSegBackbone", "checkpoint_filter_fn", "create_model", "list_models", "model_class_for", "official_key_map",
    "to_official_state_dict",
]
