"""ONE preprocessing path for training, validation and prediction (nnU-Net v1 semantics).

Plan (:func:`plan_dataset`, on the training cases) → a :class:`~uniseg_hub.config.PreprocessingConfig`; then for
every scan, at training and at prediction time alike (:func:`preprocess`):

1. **load** (:mod:`.io`): ``(C, Z, Y, X)`` float32 in the file's voxel order reversed, label maps ``(Z, Y, X)``;
2. **crop** (:mod:`.crop`) to the bounding box of the nonzero region (voxels nonzero in any channel, holes filled);
3. **resample** (:mod:`.resample`) to the target spacing: images cubic, label maps and the nonzero region linear
   on one-hot maps (``>= 0.5``), the low-resolution axis of anisotropic data nearest neighbour;
4. **normalise** (:mod:`.normalize`) each channel by its modality, inside the resampled nonzero mask where the
   scheme says ``use_nonzero_mask``.

Label convention: in :class:`Preprocessed` ``label`` holds label values and, in :class:`~uniseg_hub.data.Case`
(:func:`preprocess_case`), class indices ``0..K-1``; in both, ``-1`` marks background outside the nonzero region
(nnU-Net's ``nonzero_label``), which training treats as background. The image arrays of a case do not depend on
its label: training arrays and prediction inputs are identical.

After prediction, :func:`restore_labels` puts the argmax back on the input grid and :func:`labels_to_nifti` writes
it with the input's geometry.
"""

from .crop import bbox_of, crop_to_nonzero, fill_holes, nonzero_mask
from .dataset import BENCHMARKS, DownstreamData, benchmark_task, load_downstream, nnunet_raw_task
from .io import LoadedImage, load_image, load_label, read_nifti
from .normalize import normalize
from .pipeline import OUTSIDE, Preprocessed, labels_to_nifti, load_cases, preprocess, preprocess_case, restore_labels
from .plan import intensity_properties, plan_dataset, target_spacing, use_mask_for_norm
from .resample import ANISOTROPY_THRESHOLD, resample_labels, resample_volume, resize_axis, separate_z_axis, target_shape

__all__ = [
    "LoadedImage",
    "load_image",
    "load_label",
    "read_nifti",
    "nonzero_mask",
    "fill_holes",
    "bbox_of",
    "crop_to_nonzero",
    "ANISOTROPY_THRESHOLD",
    "resize_axis",
    "target_shape",
    "separate_z_axis",
    "resample_volume",
    "resample_labels",
    "normalize",
    "target_spacing",
    "intensity_properties",
    "use_mask_for_norm",
    "plan_dataset",
    "OUTSIDE",
    "Preprocessed",
    "preprocess",
    "preprocess_case",
    "load_cases",
    "restore_labels",
    "labels_to_nifti",
    "BENCHMARKS",
    "DownstreamData",
    "benchmark_task",
    "load_downstream",
    "nnunet_raw_task",
]
