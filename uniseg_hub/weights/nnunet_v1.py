"""Safe reader of official UniSeg / nnU-Net v1 checkpoints (``model_final_checkpoint.model`` + ``.model.pkl``).

Real nnU-Net v1 checkpoints hold numpy scalars (pickled as ``numpy.core.multiarray.scalar``) and optimizer
state, so ``torch.load(weights_only=True)`` refuses them and ``weights_only=False`` would execute whatever the
pickle says. Here the ``.model`` is read with torch's weights-only unpickler plus an explicit allow-list of numpy
data types, and the ``.model.pkl`` with a restricted unpickler that admits only numpy arrays/scalars/dtypes,
``collections.OrderedDict`` and plain builtins. Anything else is refused with :class:`CheckpointError` before
any of it runs.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PreprocessingConfig, UniSegConfig, UPSTREAM_TASKS

__all__ = ["CheckpointError", "load_nnunet_v1_checkpoint", "read_plans_pickle", "config_from_plans", "SAFE_NUMPY_GLOBALS"]

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not hold what was expected."""


def _numpy_dtype_classes() -> list[type]:
    names = ["Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType", "Int64DType",
             "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType"]
    return [getattr(np.dtypes, n) for n in names if hasattr(np.dtypes, n)]


#: What torch's weights-only unpickler may additionally build for an nnU-Net v1 ``.model``: numpy scalars and
#: dtypes (under both numpy-1 and numpy-2 module paths). No callable here runs user code.
SAFE_NUMPY_GLOBALS: list = [
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np._core.multiarray.scalar,
    np.dtype,
    *_numpy_dtype_classes(),
]

# (module, name) pairs the restricted .pkl unpickler admits, mapped to the objects it may build.
_PKL_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    **{("numpy.dtypes", cls.__name__): cls for cls in _numpy_dtype_classes()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PKL_ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to unpickle global '{module}.{name}': the file is not plain nnU-Net plans data "
                "(only numpy arrays/scalars, OrderedDict and builtin containers are allowed; pickled code is never run)"
            ) from None


def read_plans_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read an nnU-Net v1 ``.model.pkl`` (trainer info + plans) without executing code.

    Returns the top-level dict (``init``, ``name``, ``class`` (a string), ``plans``).

    Raises:
        CheckpointError: the file is missing, truncated, not a pickle, or references anything beyond plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"plans file not found: {path}")
    try:
        with path.open("rb") as fh:
            data = _RestrictedUnpickler(fh).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path} is not a readable nnU-Net v1 plans pickle (truncated or corrupt?): {e}") from None
    if not isinstance(data, dict) or "plans" not in data:
        raise CheckpointError(
            f"{path} is not an nnU-Net v1 trainer pickle: expected a dict with a 'plans' entry, got "
            f"{type(data).__name__}{' with keys ' + str(sorted(map(str, data))) if isinstance(data, dict) else ''}"
        )
    return data


def _load_model_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (expected the zip container torch.save writes; the file may be "
            "truncated or a legacy/foreign format)"
        )
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).split("Please use", 1)[0].strip()
        raise CheckpointError(
            f"refusing to load {path}: it needs objects beyond tensors and plain numpy data, and pickled code is "
            f"never executed. Details: {msg}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt?): {e}") from None
    return ckpt


def config_from_plans(plans: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None, stage: int = 0) -> UniSegConfig:
    """Derive a :class:`UniSegConfig` from nnU-Net v1 plans (and, when given, the state dict's shapes).

    ``plans_per_stage[stage]`` gives patch size, pool/conv kernels and spacing; ``base_num_features``,
    ``conv_per_stage`` and ``num_classes + 1`` (nnU-Net adds background) the rest. The state dict decides what
    the plans do not say: the number of prompt tasks (``intermedia_prompt``), the stems, and the channel cap.
    """
    try:
        stage_plans = plans["plans_per_stage"][stage]
        kw: dict[str, Any] = dict(
            patch_size=[int(p) for p in np.asarray(stage_plans["patch_size"]).tolist()],
            pool_op_kernel_sizes=[[int(k) for k in ks] for ks in stage_plans["pool_op_kernel_sizes"]],
            conv_kernel_sizes=[[int(k) for k in ks] for ks in stage_plans["conv_kernel_sizes"]],
            base_num_features=int(plans["base_num_features"]),
            conv_per_stage=int(plans.get("conv_per_stage", 2)),
            num_classes=int(plans["num_classes"]) + 1,
            preprocessing=PreprocessingConfig(spacing=[float(s) for s in np.asarray(stage_plans["current_spacing"]).tolist()]),
        )
    except (KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"the plans lack a field UniSeg needs ({e!r}); is this an nnU-Net v1 3d_fullres plans file?") from None
    kw["num_tasks"], kw["name"] = 0, "uniseg_backbone"
    if state_dict is not None:
        prompt = state_dict.get("intermedia_prompt")
        if prompt is not None:
            kw["num_tasks"], kw["name"] = int(prompt.shape[1]), "uniseg"
        stem_prefix = "conv_blocks_context.0.blocks.0.conv_"
        stems = sorted(int(k[len(stem_prefix):].split(".")[0]) for k in state_dict
                       if k.startswith(stem_prefix) and k.endswith(".weight"))
        if stems:
            kw["input_channels"] = stems
        widths = [int(v.shape[0]) for k, v in state_dict.items() if k.startswith("conv_blocks_context.") and k.endswith("conv.weight")]
        uncapped = kw["base_num_features"] * 2 ** len(kw["pool_op_kernel_sizes"])
        if widths and max(widths) < uncapped:  # the cap bound: it is the widest stage (nnU-Net's default is 320)
            kw["max_num_features"] = max(widths)
    if kw["num_tasks"] == len(UPSTREAM_TASKS):
        kw["tasks"], kw["name"] = list(UPSTREAM_TASKS), "uniseg_11task"
    try:
        return UniSegConfig(**kw)
    except ValueError as e:
        raise CheckpointError(f"the plans describe no valid UniSeg network: {e}") from None


def load_nnunet_v1_checkpoint(
    path: str | os.PathLike, plans_path: str | os.PathLike | None = None
) -> tuple[dict[str, torch.Tensor], UniSegConfig | None, dict[str, Any]]:
    """Read an official nnU-Net v1 / UniSeg checkpoint safely.

    Args:
        path: the ``.model`` file.
        plans_path: the companion trainer pickle; defaults to ``path + ".pkl"`` when that exists.

    Returns:
        ``(state_dict, config, meta)``: the official-key state dict (convert with
        :func:`uniseg_hub.models.uniseg.checkpoint_filter_fn`), the config derived from the plans (``None`` without a
        ``.pkl``), and ``meta`` (``epoch``, trainer ``name``, the raw ``plans``).

    Raises:
        CheckpointError: unsafe, truncated or foreign files, with a message naming what was expected.
    """
    path = Path(path)
    ckpt = _load_model_file(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not an nnU-Net v1 checkpoint: expected a dict with 'state_dict' (as nnU-Net's "
            f"save_checkpoint writes), found {found}"
        )
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    if not any(k.startswith("conv_blocks_context.0.blocks.0.conv_") for k in state):
        sample = sorted(state)[:4]
        raise CheckpointError(
            f"{path} holds no UniSeg network: expected the multi-stem keys 'conv_blocks_context.0.blocks.0.conv_<c>.*' "
            f"of UniSeg's first stage, found keys like {sample}"
        )
    meta: dict[str, Any] = {"epoch": ckpt.get("epoch"), "path": str(path)}
    config = None
    plans_path = Path(plans_path) if plans_path is not None else Path(str(path) + ".pkl")
    if plans_path.is_file():
        info = read_plans_pickle(plans_path)
        meta.update(name=info.get("name"), plans=info["plans"], plans_path=str(plans_path))
        config = config_from_plans(info["plans"], state)
    else:
        logger.warning("no plans file %s next to the checkpoint: the network config cannot be derived from it", plans_path)
    return state, config, meta
