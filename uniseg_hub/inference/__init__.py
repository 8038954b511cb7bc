"""Inference: sliding window equal to the official ``predict_3D`` (:mod:`.sliding_window`), the tasks a scan runs
and the preprocessing-contract warnings (:mod:`.tasks`), and the scan-level :class:`UniSegPredictor`
(:mod:`.predictor`)."""

from .predictor import Prediction, UniSegPredictor
from .sliding_window import InferenceMemoryError, compute_steps, gaussian_importance_map, sliding_window_inference
from .tasks import combined_label_offsets, contract_warnings, tasks_for_all

__all__ = [
    "compute_steps",
    "gaussian_importance_map",
    "sliding_window_inference",
    "InferenceMemoryError",
    "combined_label_offsets",
    "tasks_for_all",
    "contract_warnings",
    "Prediction",
    "UniSegPredictor",
]
