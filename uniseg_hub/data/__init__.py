"""Data: the :class:`Case` record, readers of the downstream data sets (BTCV, VS, nnU-Net raw), the official
splits, nnU-Net-v1-style planning and preprocessing."""

from .btcv import BTCV_LABELS, btcv_cases
from .case import Case
from .downstream import BENCHMARKS, DownstreamData, load_downstream
from .nnunet_raw import nnunet_raw_cases, read_dataset_json
from .planning import DatasetPlan, intensity_properties, normalize_channel, target_spacing
from .preprocess import load_cases, load_raw, plan_dataset, preprocess_case
from .raw import RawCase, check_files
from .splits import dataset_labels, load_official_splits, official_split, validate_split
from .vs import VS_LABELS, vs_cases

__all__ = [
    "Case",
    "RawCase",
    "check_files",
    "btcv_cases",
    "vs_cases",
    "nnunet_raw_cases",
    "read_dataset_json",
    "BTCV_LABELS",
    "VS_LABELS",
    "load_official_splits",
    "official_split",
    "dataset_labels",
    "validate_split",
    "DatasetPlan",
    "target_spacing",
    "intensity_properties",
    "normalize_channel",
    "load_raw",
    "plan_dataset",
    "preprocess_case",
    "load_cases",
    "BENCHMARKS",
    "DownstreamData",
    "load_downstream",
]
