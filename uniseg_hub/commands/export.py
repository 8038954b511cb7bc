"""``uniseg-hub export onnx|torchscript``: write a portable graph of a UniSeg network (see :mod:`uniseg_hub.export`)."""

from __future__ import annotations

import argparse
import logging

from ..export import DEFAULT_OPSET as _OPSET  # cheap: onnx and onnxruntime are imported only when used

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export weights to ONNX or TorchScript (dynamic batch; task fixed or as an input)",
        description="Export a UniSeg network to a self-contained ONNX file (opset 18 by default) or a TorchScript "
        "archive. With --task the task is baked in and the graph takes x (B, C, *patch) only; without it the graph "
        "takes x and task_id (B,) int64. A UniSegBackbone graph takes x of any multiple of the network's divisor. "
        "The graph returns the finest logits (B, num_classes, D, H, W). After export the file is run once on a "
        "random batch of 1 and compared with the eager network (skip with --no-check).",
    )
    p.add_argument("format", choices=["onnx", "torchscript"], help="output format")
    p.add_argument("out", metavar="OUT", help="file to write, e.g. uniseg_liver.onnx or uniseg.pt")
    p.add_argument("--weights", required=True, metavar="NAME_OR_PATH",
                   help="registry name, save_pretrained folder or official .model file")
    p.add_argument("--task", default=None,
                   help="task id or name to bake in as a constant (UniSeg only); omit to make task_id a graph input")
    p.add_argument("--channels", type=int, default=None,
                   help="input channels of the graph (one stem); default: the task's modality count, else the smallest")
    p.add_argument("--opset", type=int, default=_OPSET, help=f"ONNX opset (default {_OPSET})")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance of the post-export check (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip comparing the exported graph with the eager network")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_model, verify_export
    from ..hub import from_pretrained

    if args.format == "torchscript" and args.opset != _OPSET:
        raise ValueError("--opset applies to ONNX export only")
    model = from_pretrained(args.weights)
    kwargs = dict(task=args.task, in_channels=args.channels)
    if args.format == "onnx":
        kwargs["opset"] = args.opset
    info = export_model(model, args.format, args.out, **kwargs)
    if not args.no_check:
        verify_export(args.out, model, atol=args.atol)
    what = f"task {info.task_id} ({info.task_name})" if info.kind == "task_fixed" else info.kind.replace("_", " ")
    logger.info("wrote %s: %s graph, %s, %d input channel(s), %d classes", args.out, args.format, what, info.in_channels, info.num_classes)
    return 0
