"""Bridges to the field's other frameworks, for prompt-free :class:`~uniseg_hub.models.uniseg.UniSegBackbone` networks.

* MONAI (:mod:`uniseg_hub.interop.dynunet`): :func:`to_dynunet` / :func:`from_dynunet` — a
  ``monai.networks.nets.DynUNet`` with the same kernels, strides, filters and weights (and deep-supervision heads).
* nnU-Net v2 (:mod:`uniseg_hub.interop.nnunetv2`): :func:`to_nnunetv2` — a trained-model folder that stock
  ``nnUNetPredictor`` / ``nnUNetv2_predict`` run; :func:`export_nnunetv2_pretrained` — weights and plans for
  ``nnUNetv2_train ... -pretrained_weights``. nnunetv2 is imported only inside these functions (the ``interop``
  extra).

``docs/interop.md`` walks through both, with what does not map and why.
"""

from .common import InteropDependencyError
from .dynunet import dynunet_kwargs, dynunet_outputs, from_dynunet, load_dynunet_bundle, save_dynunet_bundle, to_dynunet
from .nnunetv2 import (
    Nnunetv2Export,
    export_nnunetv2_pretrained,
    nnunetv2_dataset_json,
    nnunetv2_plans,
    plain_conv_unet_architecture,
    to_nnunetv2,
    to_plain_conv_unet,
)

__all__ = [
    "InteropDependencyError",
    "to_dynunet",
    "from_dynunet",
    "dynunet_kwargs",
    "dynunet_outputs",
    "save_dynunet_bundle",
    "load_dynunet_bundle",
    "to_nnunetv2",
    "export_nnunetv2_pretrained",
    "to_plain_conv_unet",
    "plain_conv_unet_architecture",
    "nnunetv2_plans",
    "nnunetv2_dataset_json",
    "Nnunetv2Export",
]
