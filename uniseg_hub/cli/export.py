"""``uniseg-hub export``: ONNX / TorchScript graphs (:mod:`uniseg_hub.export`), a MONAI DynUNet, and nnU-Net v2 model
folders and pretrained checkpoints (:mod:`uniseg_hub.interop`)."""

from __future__ import annotations

import argparse
import json
import logging

from ..export import DEFAULT_OPSET as _OPSET  # cheap: onnx, onnxruntime and nnunetv2 are imported only when used

logger = logging.getLogger(__name__)

GRAPH_FORMATS = ("onnx", "torchscript")
INTEROP_FORMATS = ("dynunet", "nnunetv2", "nnunetv2-pretrained")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export weights to ONNX, TorchScript, a MONAI DynUNet or nnU-Net v2 (model folder / pretrained weights)",
        description="Export a UniSeg network. onnx / torchscript: a self-contained graph (ONNX opset 18 by default) "
        "with the task baked in (--task: the graph takes x (B, C, *patch) only) or as an input (x and task_id (B,) "
        "int64); a UniSegBackbone graph takes x of any multiple of the network's divisor; the graph returns the "
        "finest logits (B, num_classes, D, H, W). dynunet: a MONAI bundle-style folder (configs/inference.json with "
        "the DynUNet network_def, models/model.pt) holding a backbone's weights. nnunetv2: an nnU-Net v2 trained-model "
        "folder (dataset.json, plans.json, fold_0/checkpoint_final.pth) that stock nnUNetv2_predict runs. "
        "nnunetv2-pretrained: weights for nnUNetv2_train -pretrained_weights plus the plans to train them with "
        "(docs/interop.md); a prompt-driven UniSeg is transferred first (strategy 'official'). Weights come from "
        "--weights or the WEIGHTS positional. After export the result is compared with the eager network on a random "
        "batch (skip with --no-check).",
    )
    p.add_argument("format", choices=[*GRAPH_FORMATS, *INTEROP_FORMATS], help="output format")
    p.add_argument("weights_path", nargs="?", default=None, metavar="WEIGHTS",
                   help="weights to export (instead of --weights): registry name, save_pretrained folder or .model file")
    p.add_argument("out", metavar="OUT",
                   help="file (onnx, torchscript: uniseg_liver.onnx, uniseg.pt) or folder (dynunet, nnunetv2, "
                        "nnunetv2-pretrained) to write")
    p.add_argument("--weights", default=None, metavar="NAME_OR_PATH",
                   help="registry name, save_pretrained folder or official .model file")
    p.add_argument("--task", default=None,
                   help="task id or name to bake in as a constant (UniSeg onnx/torchscript only); omit to make task_id "
                        "a graph input")
    p.add_argument("--channels", type=int, default=None,
                   help="input channels (one stem); default: the task's modality count, else the only stem (onnx, "
                        "torchscript: else the smallest)")
    p.add_argument("--modalities", default=None, metavar="M1,M2",
                   help="nnunetv2, nnunetv2-pretrained: modality of each input channel (picks its normalisation), "
                        "e.g. CT or CT,PET, when the weights' task does not name them")
    p.add_argument("--dataset-name", default=None, metavar="DatasetNNN_Name",
                   help="nnunetv2: the nnU-Net data set name (default Dataset999_<task>)")
    p.add_argument("--dataset-plans", default=None, metavar="PLANS_JSON",
                   help="nnunetv2-pretrained: your data set's nnUNetPlans.json, to which the configuration "
                        "3d_fullres_uniseg is added (in place)")
    p.add_argument("--axes", choices=["zyx", "xyz"], default="zyx",
                   help="dynunet: tensor axis order of the network, zyx = uniseg_hub / nnU-Net arrays, xyz = MONAI "
                        "LoadImage arrays (default zyx)")
    p.add_argument("--opset", type=int, default=_OPSET, help=f"ONNX opset (default {_OPSET})")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance of the post-export check (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip comparing the export with the eager network")
    p.set_defaults(func=run)


def _weights(args: argparse.Namespace) -> str:
    if args.weights_path is not None and args.weights is not None:
        raise ValueError(f"weights given twice: WEIGHTS {args.weights_path!r} and --weights {args.weights!r}")
    weights = args.weights_path if args.weights_path is not None else args.weights
    if weights is None:
        raise ValueError("name the weights to export: uniseg-hub export FORMAT WEIGHTS OUT (or --weights WEIGHTS)")
    return weights


def _check_options(args: argparse.Namespace) -> None:
    fmt = args.format
    if fmt != "onnx" and args.opset != _OPSET:
        raise ValueError("--opset applies to ONNX export only")
    if fmt in INTEROP_FORMATS and args.task is not None:
        raise ValueError(f"--task applies to onnx/torchscript only: a {fmt} export holds a prompt-free backbone, which "
                         "has one task")
    only = {"--modalities": ("nnunetv2", "nnunetv2-pretrained"), "--dataset-name": ("nnunetv2",),
            "--dataset-plans": ("nnunetv2-pretrained",)}
    for opt, formats in only.items():
        if getattr(args, opt[2:].replace("-", "_")) is not None and fmt not in formats:
            raise ValueError(f"{opt} applies to {' / '.join(formats)} export only")
    if args.axes != "zyx" and fmt != "dynunet":
        raise ValueError("--axes applies to dynunet export only")


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    weights = _weights(args)
    if args.format in GRAPH_FORMATS:
        return _run_graph(args, weights)
    from ..interop import InteropDependencyError

    try:
        return _run_interop(args, weights)
    except InteropDependencyError as e:  # nnunetv2 not installed: one line, not a traceback
        raise ValueError(str(e)) from e


def _run_graph(args: argparse.Namespace, weights: str) -> int:
    from ..export import export_model, verify_export
    from ..hub import from_pretrained

    model = from_pretrained(weights)
    kwargs = dict(task=args.task, in_channels=args.channels)
    if args.format == "onnx":
        kwargs["opset"] = args.opset
    info = export_model(model, args.format, args.out, **kwargs)
    if not args.no_check:
        verify_export(args.out, model, atol=args.atol)
    what = f"task {info.task_id} ({info.task_name})" if info.kind == "task_fixed" else info.kind.replace("_", " ")
    logger.info("wrote %s: %s graph, %s, %d input channel(s), %d classes", args.out, args.format, what, info.in_channels, info.num_classes)
    return 0


def _modalities(args: argparse.Namespace) -> list[str] | None:
    if args.modalities is None:
        return None
    mods = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if not mods:
        raise ValueError(f"--modalities needs comma-separated names such as CT or CT,PET, got {args.modalities!r}")
    return mods


def _run_interop(args: argparse.Namespace, weights: str) -> int:
    from ..hub import from_pretrained
    from ..interop import export_nnunetv2_pretrained, to_nnunetv2

    if args.format == "nnunetv2-pretrained":
        res = export_nnunetv2_pretrained(weights, args.out, in_channels=args.channels, modalities=_modalities(args),
                                         dataset_plans=args.dataset_plans, check=not args.no_check, atol=args.atol)
        logger.info("wrote %s and plans %s (see docs/interop.md)", res.checkpoint, ", ".join(map(str, res.plans)))
        return 0
    model = from_pretrained(weights)
    if args.format == "nnunetv2":
        res = to_nnunetv2(model, args.out, dataset_name=args.dataset_name, modalities=_modalities(args),
                          in_channels=args.channels, check=not args.no_check, atol=args.atol)
        logger.info("wrote nnU-Net v2 model folder %s: put it at $nnUNet_results/%s/nnUNetTrainer__nnUNetPlans__3d_fullres "
                    "for nnUNetv2_predict -d, or run nnUNetv2_predict_from_modelfolder -m %s",
                    res.folder, json.loads(res.dataset_json.read_text())["name"], res.folder)
        return 0
    from ..interop import save_dynunet_bundle

    folder, diff = save_dynunet_bundle(model, args.out, args.channels, axes=args.axes, check=not args.no_check,
                                       atol=args.atol)
    logger.info("wrote MONAI bundle-style folder %s (DynUNet, axes %s%s)", folder, args.axes,
                "" if diff is None else f"; matches the eager network: max abs difference {diff:.3g}")
    return 0
