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
nearest for label maps) and split at the mid-sagittal plane (world x = 0): **left hemispheres train, right
hemispheres validate**, upstream and downstream alike, so no validation voxel is ever trained on.
:func:`write_task_dataset` writes each task as an nnU-Net raw data set (``imagesTr/``, ``labelsTr/``,
``dataset.json``; raw intensities, the scans' own geometry): from there on the demo uses the library's one
preprocessing path (:mod:`uniseg_hub.preprocessing`) exactly as a user's data set would, and ``uniseg-hub finetune
--data FOLDER`` takes the folder too. Arrays are ``(z, y, x)`` like everywhere in uniseg_hub.
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

import json

import nibabel as nib

from ..config import PreprocessingConfig, TaskSpec, UniSegConfig
from ..data.case import Case
from ..data.raw import RawCase
from ..preprocessing import load_cases, read_nifti

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
    "write_task_dataset",
    "task_raw_cases",
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


def hemisphere_slices(n: int, affine: np.ndarray) -> tuple[slice, slice]:
    """Voxel slices ``(left, right)`` of the first voxel axis (world x) of a grid of ``n`` voxels, cut at x = 0.

    ``affine`` is the NIfTI (RAS) affine of the ``(x, y, z)`` voxel grid; only axis-aligned grids are supported.
    """
    a = np.asarray(affine, dtype=np.float64)
    if not np.allclose(a[0, 1:3], 0) or a[0, 0] == 0:
        raise ValueError(f"hemisphere_split needs a grid whose first voxel axis is world x (axis-aligned), got affine\n{a}")
    world_x = a[0, 0] * np.arange(n) + a[0, 3]
    right_mask = world_x >= 0
    cut = int(np.argmax(right_mask)) if a[0, 0] > 0 else int(np.argmax(~right_mask))
    low, high = slice(0, cut), slice(cut, n)
    return (low, high) if a[0, 0] > 0 else (high, low)


def hemisphere_split(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Cut ``(C, z, y, x)`` / ``(z, y, x)`` arrays at world x = 0 → ``((left image, left label), (right ...))``
    (see :func:`hemisphere_slices`)."""
    left, right = hemisphere_slices(image.shape[-1], affine)
    return (image[..., left], label[..., left]), (image[..., right], label[..., right])


def task_volumes(task: str, spacing: float = DEMO_SPACING, mricron: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole-head image ``(z, y, x)`` (raw intensities), label ``(z, y, x)`` and NIfTI affine of one demo task
    at ``spacing`` mm."""
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
    return img.astype(np.float32), lab, aff


def _task_spec(name: str) -> TaskSpec:
    for t in (*UPSTREAM_TASKS, DOWNSTREAM_TASK):
        if t.name == name:
            return t
    raise ValueError(f"unknown demo task {name!r}; known: {[t.name for t in (*UPSTREAM_TASKS, DOWNSTREAM_TASK)]}")


def _save_block(array_zyx: np.ndarray, affine: np.ndarray, x_slice: slice, path: Path, dtype) -> None:
    """Write the ``x_slice`` block of a ``(z, y, x)`` volume on grid ``affine`` as NIfTI (file order x, y, z)."""
    aff = np.asarray(affine, dtype=np.float64).copy()
    aff[:3, 3] = aff[:3, :3] @ np.array([x_slice.start, 0, 0]) + aff[:3, 3]
    block = np.ascontiguousarray(array_zyx[..., x_slice].transpose(2, 1, 0)).astype(dtype)
    img = nib.Nifti1Image(block, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))


def write_task_dataset(task: str, root: str | Path, spacing: float = DEMO_SPACING, mricron: Path | None = None) -> tuple[RawCase, RawCase]:
    """Write one demo task as an nnU-Net raw data set in ``root/<task>/``: the left and the right hemisphere
    (``<task>_left``, ``<task>_right``; raw intensities at ``spacing`` mm, labels with the task's values) and a
    ``dataset.json`` naming the classes. Returns ``(left, right)`` as :class:`~uniseg_hub.data.RawCase`."""
    spec = _task_spec(task)
    folder = Path(root) / task
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    img, lab, aff = task_volumes(task, spacing, mricron)
    out = []
    for side, sl in zip(("left", "right"), hemisphere_slices(img.shape[-1], aff)):
        name = f"{task}_{side}"
        image_path, label_path = folder / "imagesTr" / f"{name}_0000.nii.gz", folder / "labelsTr" / f"{name}.nii.gz"
        _save_block(img, aff, sl, image_path, np.float32)
        _save_block(lab, aff, sl, label_path, np.uint8)
        out.append(RawCase(name, (image_path,), label_path))
    meta = {"name": task, "description": f"uniseg_hub demo task {task!r} ({_SOURCES[task]}), one case per hemisphere at {spacing:g} mm",
            "tensorImageSize": "3D", "modality": {str(i): m for i, m in enumerate(spec.modalities)},
            "labels": {"0": "background", **spec.labels}, "numTraining": 2,
            "training": [{"image": f"./imagesTr/{c.name}.nii.gz", "label": f"./labelsTr/{c.name}.nii.gz"} for c in out],
            "test": []}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out[0], out[1]


def task_raw_cases(tasks: Sequence[str], root: str | Path, spacing: float = DEMO_SPACING,
                   mricron: Path | None = None) -> tuple[list[RawCase], list[RawCase]]:
    """:func:`write_task_dataset` for several tasks: ``([left hemispheres], [right hemispheres])``."""
    pairs = [write_task_dataset(t, root, spacing, mricron) for t in tasks]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def task_cases(
    tasks: Sequence[str],
    root: str | Path,
    config: PreprocessingConfig,
    spacing: float = DEMO_SPACING,
    task_ids: Sequence[int | None] | None = None,
    mricron: Path | None = None,
) -> tuple[list[Case], list[Case]]:
    """Left-hemisphere training and right-hemisphere validation cases of several demo tasks, written to ``root``
    as raw data sets and preprocessed with ``config`` (:func:`uniseg_hub.preprocessing.load_cases`).

    Args:
        task_ids: prompt task id per task (``None`` for single-task models); default ``0, 1, ...``.
    """
    task_ids = list(range(len(tasks))) if task_ids is None else list(task_ids)
    train, val = [], []
    for name, tid in zip(tasks, task_ids):
        left, right = write_task_dataset(name, root, spacing, mricron)
        spec = _task_spec(name)
        train += load_cases([left], config, spec, task_id=tid)
        val += load_cases([right], config, spec, task_id=tid)
    return train, val
