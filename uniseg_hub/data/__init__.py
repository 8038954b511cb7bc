"""Data: the :class:`Case` record, readers of the downstream data sets (BTCV, VS, nnU-Net raw) and the official
splits. Planning and preprocessing live in :mod:`uniseg_hub.preprocessing` (which imports this package, never the
other way round)."""

from .btcv import BTCV_LABELS, btcv_cases
from .case import Case
from .nnunet_raw import nnunet_raw_cases, read_dataset_json
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
]
