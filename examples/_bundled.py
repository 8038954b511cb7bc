"""Real scans for the examples, with no download: nilearn's bundled MNI152 2009a brain MRI.

``pip install --no-deps nilearn==0.14.1`` (done by ``make demo`` / ``make test``) ships, in
``nilearn/datasets/data/``, the skull-stripped MNI152 2009a symmetric T1 (197x233x189 voxels at 1 mm) and its grey-
and white-matter probability maps. The examples segment that scan and build a small data set from it.

:func:`write_nnunet_raw_dataset` writes a data set in the nnU-Net raw layout (``imagesTr/CASE_0000.nii.gz``,
``labelsTr/CASE.nii.gz``, ``dataset.json``) with one case per brain hemisphere and per resolution, labelled
cerebrospinal fluid / grey matter / white matter (argmax of the tissue maps inside the brain). The template is
left-right symmetric, so hemisphere splits are a check of the pipeline, not an estimate of generalisation.
:func:`tissue_cases` gives the same brain as in-memory :class:`~uniseg_hub.data.Case` records.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

import torch

from uniseg_hub import PreprocessingConfig
from uniseg_hub.data import Case
from uniseg_hub.demo.data import hemisphere_split, load_volume, nilearn_data_dir
from uniseg_hub.preprocessing import crop_to_nonzero, normalize

__all__ = ["REPO_ROOT", "mni152_file", "tissue_labels", "tissue_cases", "write_nnunet_raw_dataset", "DATASET_LABELS"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_LABELS = {"0": "background", "1": "cerebrospinal fluid", "2": "grey matter", "3": "white matter"}
_FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
          "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
          "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def mni152_file(kind: str = "t1") -> Path:
    """Path of a bundled MNI152 file: ``"t1"``, ``"gm"`` or ``"wm"``."""
    d = nilearn_data_dir()
    if d is None:
        raise FileNotFoundError("nilearn's bundled MNI152 files are missing: expected nilearn/datasets/data/"
                                f"{_FILES['t1']} (install with `pip install --no-deps nilearn==0.14.1`)")
    return d / _FILES[kind]


def tissue_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Label map of the brain (``t1 > 0``): 1 CSF, 2 grey matter, 3 white matter (argmax of the maps); 0 outside."""
    csf = np.clip(255.0 - gm - wm, 0, None)
    lab = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.int16) + 1
    lab[t1 <= 0] = 0
    return lab


def _save(array_zyx: np.ndarray, affine: np.ndarray, x0: int, path: Path, dtype) -> None:
    """Write a ``(z, y, x)`` block cut at voxel ``x0`` of the grid ``affine`` as NIfTI (file order x, y, z)."""
    aff = affine.copy()
    aff[:3, 3] = affine[:3, :3] @ np.array([x0, 0, 0]) + affine[:3, 3]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)).astype(dtype), aff), str(path))


def write_nnunet_raw_dataset(root: str | Path, spacings: tuple[float, ...] = (3.0, 3.5)) -> Path:
    """Write the example data set (one case per hemisphere and spacing) in the nnU-Net raw layout.

    Case names are ``brain_<spacing>mm_<left|right>``; the right hemispheres come last (the examples validate on
    them). Returns ``root``.
    """
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    names = {"left": [], "right": []}
    for sp in spacings:
        t1, aff = load_volume(mni152_file("t1"), sp)
        gm, _ = load_volume(mni152_file("gm"), sp)
        wm, _ = load_volume(mni152_file("wm"), sp)
        lab = tissue_labels(t1, gm, wm)
        (li, ll), (ri, rl) = hemisphere_split(t1, lab, aff)
        cut = li.shape[-1] if aff[0, 0] > 0 else ri.shape[-1]
        for side, img, seg in (("left", li, ll), ("right", ri, rl)):
            name = f"brain_{sp:g}mm_{side}".replace(".", "p")
            x0 = 0 if (side == "left") == (aff[0, 0] > 0) else cut
            _save(img, aff, x0, root / "imagesTr" / f"{name}_0000.nii.gz", np.float32)
            _save(seg, aff, x0, root / "labelsTr" / f"{name}.nii.gz", np.uint8)
            names[side].append(name)
    cases = names["left"] + names["right"]
    meta = {
        "name": "MNI152Tissue",
        "description": "brain tissue of the MNI152 2009a symmetric template (nilearn), one case per hemisphere and spacing",
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "labels": DATASET_LABELS,
        "numTraining": len(cases),
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in cases],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def tissue_cases(spacing: float = 3.0, task_id: int | None = None) -> tuple[list[Case], list[Case]]:
    """The bundled brain at ``spacing`` mm as in-memory cases: ``([left hemisphere], [right hemisphere])``.

    Each hemisphere is cropped to the brain's bounding box and z-scored there (the MR scheme of the preprocessing
    contract, applied after cropping as the official preprocessing does); labels as :func:`tissue_labels`.
    """
    t1, aff = load_volume(mni152_file("t1"), spacing)
    gm, _ = load_volume(mni152_file("gm"), spacing)
    wm, _ = load_volume(mni152_file("wm"), spacing)
    lab = tissue_labels(t1, gm, wm)
    (li, ll), (ri, rl) = hemisphere_split(t1[None], lab, aff)
    cases = []
    for name, img, seg in (("brain_left", li, ll), ("brain_right", ri, rl)):
        cropped, bbox = crop_to_nonzero(img)  # the brain's bounding box, as nnU-Net crops before normalising
        box = tuple(slice(a, b) for a, b in bbox)
        image = normalize(torch.from_numpy(cropped), ["MR"], PreprocessingConfig(normalization={"MR": {"scheme": "zscore"}})).numpy()
        cases.append(Case(name, np.ascontiguousarray(image), np.ascontiguousarray(seg[box]), (float(spacing),) * 3, task_id))
    return [cases[0]], [cases[1]]
