"""Real brain scans that ship in packages, turned into the tasks of the demonstration model.

Sources (installed, never copied into the repository):

* PyPI ``nilearn`` (data only): the MNI152 2009a symmetric T1 (skull-stripped, 197x233x189 at 1 mm) with its
  grey- and white-matter probability maps, in ``nilearn/datasets/data/``.
* Debian ``mricron-data`` (``/usr/share/mricron/templates/``): the Colin27 T1 with skull (``ch2.nii.gz``), its
  brain (``ch2bet.nii.gz``) and the AAL atlas (``aal.nii.gz``, 116 regions named in ``aal.nii.txt``) on the
  same 181x217x181 1 mm grid.

Tasks (labels include background 0):

=============  ==========  ==================================================================  ===========
name           image       classes                                                             use
=============  ==========  ==================================================================  ===========
``tissue``     MNI152 T1   grey matter, white matter (argmax of the probability maps)          upstream
``brain``      Colin27 T1  brain (``ch2bet > 0``)                                              upstream
``lobes``      Colin27 T1  frontal, parietal, temporal, occipital, limbic, cerebellum (AAL)     upstream
``deep_grey``  Colin27 T1  caudate, putamen, pallidum, thalamus (AAL; never seen upstream)     downstream
=============  ==========  ==================================================================  ===========

Every volume is resampled to the demo spacing (MONAI ``Spacing``: trilinear for images and probability maps,
nearest for label maps), z-scored (the MR scheme of the preprocessing contract) and split at the mid-sagittal
plane (world x = 0): **left hemispheres train, right hemispheres validate**, upstream and downstream alike,
so no validation voxel is ever trained on. Arrays are ``(z, y, x)`` like everywhere in uniseg_hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
from monai.transforms import Spacing

from .config import PreprocessingConfig, TaskSpec, UniSegConfig
from .data.case import Case
from .preprocessing import crop_to_nonzero
from .data.preprocess import read_nifti

__all__ = [
    "MRICRON_DIR",
    "DEMO_SPACING",
    "UPSTREAM_TASKS",
    "DOWNSTREAM_TASK",
    "demo_model_config",
    "AAL_LOBES",
    "AAL_DEEP_GREY",
    "nilearn_data_dir",
    "mricron_dir",
    "ensure_mricron",
    "load_volume",
    "aal_names",
    "aal_group_map",
    "hemisphere_split",
    "task_volumes",
    "task_cases",
]

_log = logging.getLogger(__name__)

MRICRON_DIR = Path("/usr/share/mricron/templates")
DEMO_SPACING = 3.0

#: AAL region name prefixes (``_L`` / ``_R`` stripped) of each lobe class of the upstream ``lobes`` task.
AAL_LOBES: dict[str, tuple[str, ...]] = {
    "frontal": ("Precentral", "Frontal_", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Rectus", "Paracentral_Lobule"),
    "parietal": ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus"),
    "temporal": ("Heschl", "Temporal_", "Fusiform"),
    "occipital": ("Calcarine", "Cuneus", "Lingual", "Occipital_"),
    "limbic": ("Cingulum_", "Hippocampus", "ParaHippocampal", "Amygdala", "Insula"),
    "cerebellum": ("Cerebelum_", "Vermis_"),
}
#: AAL regions of the held-out downstream task (left and right merged).
AAL_DEEP_GREY: dict[str, tuple[str, ...]] = {
    "caudate": ("Caudate",), "putamen": ("Putamen",), "pallidum": ("Pallidum",), "thalamus": ("Thalamus",),
}

UPSTREAM_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("tissue", 3, ["MR"], {"1": "grey matter", "2": "white matter"}),
    TaskSpec("brain", 2, ["MR"], {"1": "brain"}),
    TaskSpec("lobes", 7, ["MR"], {str(i + 1): n for i, n in enumerate(AAL_LOBES)}),
)
DOWNSTREAM_TASK = TaskSpec("deep_grey", 5, ["MR"], {str(i + 1): n for i, n in enumerate(AAL_DEEP_GREY)})


def demo_model_config(spacing: float = DEMO_SPACING) -> UniSegConfig:
    """The demonstration UniSeg: the published architecture family (nnU-Net v1 UNet + universal prompt, three
    fusion blocks, instance norm, leaky ReLU) shrunk to 4 stages of 8-16-32-64 features, one 1-channel stem,
    patch 32x48x32 at ``spacing`` mm (prompt 4x6x4) and the three upstream demo tasks (7 output classes; a
    task uses its first ``num_classes`` channels, as the official 11-task model does)."""
    return UniSegConfig(
        patch_size=[32, 48, 32],
        pool_op_kernel_sizes=[[2, 2, 2]] * 3,
        conv_kernel_sizes=[[3, 3, 3]] * 4,
        base_num_features=8,
        max_num_features=64,
        input_channels=[1],
        num_classes=max(t.num_classes for t in UPSTREAM_TASKS),
        num_tasks=len(UPSTREAM_TASKS),
        tasks=list(UPSTREAM_TASKS),
        preprocessing=PreprocessingConfig(spacing=[float(spacing)] * 3, normalization={"MR": {"scheme": "zscore"}}),
        name="uniseg_demo",
    )


_SOURCES = {"tissue": "nilearn", "brain": "mricron", "lobes": "mricron", "deep_grey": "mricron"}


# ---------------------------------------------------------------------------------------------------------------
# Where the scans are
# ---------------------------------------------------------------------------------------------------------------
def nilearn_data_dir() -> Path | None:
    """``nilearn/datasets/data`` of the installed nilearn when it holds the MNI152 files, else ``None``."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return d if (d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").is_file() else None


def mricron_dir(root: str | Path = MRICRON_DIR) -> Path | None:
    """The mricron-data templates folder when it holds Colin27 and AAL, else ``None``."""
    root = Path(root)
    need = ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")
    return root if all((root / f).is_file() for f in need) else None


def ensure_mricron(install: bool = True) -> tuple[Path | None, str]:
    """Find mricron-data; when missing, ``apt-get install`` it if allowed, apt-get exists and we are root.

    Returns:
        ``(folder or None, a sentence saying what happened)``.
    """
    found = mricron_dir()
    if found is not None:
        return found, f"mricron-data found in {found}"
    if not install:
        return None, "mricron-data is not installed (installation not requested): running the nilearn-only part"
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        why = "apt-get is not available" if apt is None else "not running as root"
        return None, (f"mricron-data is not installed and {why}: running the nilearn-only part "
                      "(install it with `apt-get install mricron-data` for the full demo)")
    _log.info("installing the Debian package mricron-data (Colin27 + AAL templates) with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "mricron-data"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            return None, f"`{' '.join(cmd[1:])}` failed ({proc.stderr.strip()[-200:]}): running the nilearn-only part"
    found = mricron_dir()
    return found, ("mricron-data installed with apt-get" if found else
                   f"apt-get ran but {MRICRON_DIR} lacks the templates: running the nilearn-only part")


# ---------------------------------------------------------------------------------------------------------------
# Volumes and labels
# ---------------------------------------------------------------------------------------------------------------
def load_volume(path: str | Path, spacing: float | Sequence[float] = DEMO_SPACING, label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume resampled to ``spacing`` mm, as ``(z, y, x)`` float32 (labels: int16) and its new affine."""
    sp = [float(spacing)] * 3 if np.isscalar(spacing) else [float(s) for s in spacing][::-1]
    vol = read_nifti(path)
    out = Spacing(pixdim=sp, mode="nearest" if label else "bilinear", padding_mode="zeros", dtype=np.float32)(vol)
    arr = out.numpy()[0].transpose(2, 1, 0)
    arr = np.rint(arr).astype(np.int16) if label else arr.astype(np.float32)
    return np.ascontiguousarray(arr), np.asarray(out.affine, dtype=np.float64)


def aal_names(txt: str | Path) -> dict[int, str]:
    """AAL label value → region name, from ``aal.nii.txt`` (``"1 Precentral_L 2001"`` lines)."""
    out = {}
    for line in Path(txt).read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1]
    return out


def aal_group_map(names: dict[int, str], groups: dict[str, tuple[str, ...]]) -> np.ndarray:
    """Lookup table AAL value → class (1-based position of its group in ``groups``; 0 when in none)."""
    lut = np.zeros(max(names) + 1, dtype=np.int16)
    for value, name in names.items():
        base = name[:-2] if name.endswith(("_L", "_R")) else name
        for cls, prefixes in enumerate(groups.values(), start=1):
            if any(base == p or (p.endswith("_") and base.startswith(p)) for p in prefixes):
                lut[value] = cls
                break
    return lut


def hemisphere_split(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Cut ``(C, z, y, x)`` / ``(z, y, x)`` arrays at world x = 0 → ``((left image, left label), (right ...))``.

    ``affine`` is the NIfTI (RAS) affine of the ``(x, y, z)`` voxel grid; only axis-aligned grids are supported.
    """
    a = np.asarray(affine, dtype=np.float64)
    if not np.allclose(a[0, 1:3], 0) or a[0, 0] == 0:
        raise ValueError(f"hemisphere_split needs a grid whose first voxel axis is world x (axis-aligned), got affine\n{a}")
    n = image.shape[-1]
    world_x = a[0, 0] * np.arange(n) + a[0, 3]
    right_mask = world_x >= 0
    cut = int(np.argmax(right_mask)) if a[0, 0] > 0 else int(np.argmax(~right_mask))
    low, high = (slice(0, cut), slice(cut, n))
    lo_side_is_left = a[0, 0] > 0
    left, right = (low, high) if lo_side_is_left else (high, low)
    return (image[..., left], label[..., left]), (image[..., right], label[..., right])


def task_volumes(task: str, spacing: float = DEMO_SPACING, mricron: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole-brain image ``(1, z, y, x)`` (z-scored), label ``(z, y, x)`` and affine of one demo task."""
    if _SOURCES[task] == "nilearn":
        d = nilearn_data_dir()
        if d is None:
            raise FileNotFoundError("nilearn's bundled MNI152 files are missing: expected "
                                    "nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz "
                                    "(install with `pip install --no-deps nilearn==0.14.1`)")
        img, aff = load_volume(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", spacing)
        gm, _ = load_volume(d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", spacing)
        wm, _ = load_volume(d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", spacing)
        probs = np.stack([np.clip(255.0 - gm - wm, 0, None), gm, wm])
        lab = probs.argmax(0).astype(np.int16)
    else:
        d = mricron if mricron is not None else mricron_dir()
        if d is None:
            raise FileNotFoundError(f"task {task!r} needs mricron-data: expected ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz "
                                    f"and aal.nii.txt in {MRICRON_DIR} (`apt-get install mricron-data`)")
        img, aff = load_volume(d / "ch2.nii.gz", spacing)
        if task == "brain":
            bet, _ = load_volume(d / "ch2bet.nii.gz", spacing)
            lab = (bet > 0.5).astype(np.int16)
        else:
            aal, _ = load_volume(d / "aal.nii.gz", spacing, label=True)
            groups = AAL_LOBES if task == "lobes" else AAL_DEEP_GREY
            lab = aal_group_map(aal_names(d / "aal.nii.txt"), groups)[np.clip(aal, 0, None)]
    # z-score with the statistics of the nonzero bounding box, as the predictor does (it crops to nonzero first,
    # like nnU-Net v1), so the demo model sees the same intensities in training and in `uniseg-hub predict`
    _, bbox = crop_to_nonzero(img[None])
    inside = img[tuple(slice(a, b) for a, b in bbox)].astype(np.float64)
    image = ((img - inside.mean()) / (inside.std() + 1e-8)).astype(np.float32)[None]
    return image, lab, aff


def task_cases(
    tasks: Sequence[str], spacing: float = DEMO_SPACING, task_ids: Sequence[int | None] | None = None, mricron: Path | None = None
) -> tuple[list[Case], list[Case]]:
    """Left-hemisphere training cases and right-hemisphere validation cases of several demo tasks.

    Args:
        tasks: task names (see the module table).
        task_ids: prompt task id per task (``None`` for single-task models); default ``0, 1, ...``.

    Returns:
        ``(train, val)``: one :class:`Case` per task and hemisphere, ``meta["hemisphere"]`` = ``"left"``/``"right"``.
    """
    task_ids = list(range(len(tasks))) if task_ids is None else list(task_ids)
    train, val = [], []
    for name, tid in zip(tasks, task_ids):
        image, label, aff = task_volumes(name, spacing, mricron)
        (li, ll), (ri, rl) = hemisphere_split(image, label, aff)
        meta = {"task": name, "source": _SOURCES[name], "spacing_mm": spacing}
        train.append(Case(f"{name}_left", np.ascontiguousarray(li), np.ascontiguousarray(ll), (spacing,) * 3, tid, {**meta, "hemisphere": "left"}))
        val.append(Case(f"{name}_right", np.ascontiguousarray(ri), np.ascontiguousarray(rl), (spacing,) * 3, tid, {**meta, "hemisphere": "right"}))
    return train, val
