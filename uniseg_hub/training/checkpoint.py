"""Training checkpoints written atomically (:mod:`uniseg_hub.atomic`) and read with ``weights_only=True``.

A checkpoint holds the :class:`~uniseg_hub.training.Trainer` state (model, optimizer, grad scaler, epoch), the epoch, the history, and every
random state the run uses (the sampling/augmentation generator, torch CPU and CUDA), so ``resume`` continues
exactly where the run stopped. A process killed while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_file

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "restore_rng_state"]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` atomically (:func:`uniseg_hub.atomic.atomic_file`: temporary file next
    to ``path``, fsync, rename): a kill leaves the previous checkpoint or the new one, never a partial file."""
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only; no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in ("trainer", "epoch", "rng", "history") if k not in payload]
    if missing:
        raise ValueError(f"{path} is not a uniseg_hub training checkpoint: missing {missing}")
    return payload


def rng_state(generator: np.random.Generator) -> dict[str, Any]:
    """Every random state of the run: the numpy generator (as JSON-like data), torch CPU and CUDA."""
    state = {"numpy": generator.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(generator: np.random.Generator, state: dict[str, Any]) -> None:
    generator.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
