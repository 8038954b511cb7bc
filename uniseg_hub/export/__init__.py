"""Export UniSeg networks to portable graphs: the traceable modules (:mod:`.modules`) and the ONNX / TorchScript
writers and readers (:mod:`.io`). MONAI and nnU-Net v2 conversions live in :mod:`uniseg_hub.interop`."""

from .io import DEFAULT_OPSET, EXPORT_FORMATS, ExportedModel, export_model, export_onnx, export_torchscript, load_exported, verify_export
from .modules import BackboneExport, ExportInfo, StableInstanceNorm, TaskFixedUniSeg, TaskInputUniSeg, build_export_module

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "ExportInfo",
    "TaskFixedUniSeg",
    "TaskInputUniSeg",
    "BackboneExport",
    "StableInstanceNorm",
    "build_export_module",
    "export_onnx",
    "export_torchscript",
    "export_model",
    "ExportedModel",
    "load_exported",
    "verify_export",
]
