"""``uniseg-hub predict``: segment a scan (NIfTI files or DICOM folders, one per channel) into a NIfTI label map."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment a scan with UniSeg weights (NIfTI/DICOM in, NIfTI out on the input's grid)",
        description="Sliding-window prediction as the official nnUNet_predict does (Gaussian weighting, "
        "mirroring, class restriction), with the result written on the input's voxel grid.",
    )
    p.add_argument("-i", "--input", nargs="+", required=True, metavar="IN",
                   help="one NIfTI file or DICOM series folder per input channel (e.g. CT then PET)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.nii.gz", help="label map to write")
    p.add_argument("--weights", required=True, metavar="NAME_OR_PATH",
                   help="registry name, save_pretrained folder, fine-tuning run folder (loads its final/) or official .model file")
    p.add_argument("--task", default=None,
                   help="task id, task name (e.g. liver) or 'all'; omit it for a prompt-free (fine-tuned backbone) model "
                   "or to use the model's default task (the new task of a keep-prompt / prompt-tuning fine-tune)")
    p.add_argument("--modality", default=None, help="for --task all: modality of the input, e.g. CT, MR or CT,PET")
    p.add_argument("--no-mirror", action="store_true", help="disable test-time mirroring (8x faster)")
    p.add_argument("--step", type=float, default=0.5, help="window step as a fraction of the patch (default 0.5)")
    p.add_argument("--sw-batch-size", type=int, default=None,
                   help="windows per forward pass (default 1 on CPU, where batching is slower, 2 on CUDA)")
    p.add_argument("--spacing", default=None, metavar="Z,Y,X", help="target spacing override in mm, e.g. 3,1.5,1.5")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--memory-limit-gb", type=float, default=None, help="refuse volumes estimated to need more")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write OUT.npz with each task's probabilities on the input grid (float16)")
    p.add_argument("--preview", default=None, metavar="out.png", help="write a PNG of three orthogonal slices")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and --preview) if they exist (default: refuse)")
    speed = p.add_argument_group("speed (see benchmarks/README.md for measured effects)")
    speed.add_argument("--mirror-axes", default=None, metavar="AXES",
                       help="mirror only these axes, e.g. 2 or 1,2 (default: the axes the model was trained mirrored along, "
                       "config.mirror_axes; fewer axes are a documented fast mode)")
    speed.add_argument("--optimize", action="store_true",
                       help="(the default) run an optimize_for_inference copy of the network: same segmentation, faster")
    speed.add_argument("--no-optimize", action="store_true", help="run the eager network as loaded")
    speed.add_argument("--compile", action="store_true",
                       help="always torch.compile the network (one graph, inductor freezing; falls back to eager if "
                       "compiling fails); default: compile when the scan needs enough window forwards to repay it (CPU)")
    speed.add_argument("--no-compile", action="store_true", help="never compile")
    speed.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                       help="half-precision autocast (meant for CUDA; approximate: probabilities differ slightly)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference import UniSegPredictor
    from ..preprocessing import load_image
    from ..plots.preview import save_preview
    from ..resources import check_output_files, resolve_device

    spacing = None
    if args.spacing is not None:
        try:
            spacing = [float(s) for s in args.spacing.split(",")]
        except ValueError:
            raise ValueError(f"--spacing must be three numbers Z,Y,X in mm, got {args.spacing!r}") from None
        if len(spacing) != 3:
            raise ValueError(f"--spacing must be three numbers Z,Y,X in mm, got {args.spacing!r}")
    if not 0 < args.step <= 1:  # also refuses nan
        raise ValueError(f"--step must be in (0, 1], got {args.step}")
    mirror_axes = None  # the model's config: the axes it was trained mirrored along
    if args.mirror_axes:
        try:
            mirror_axes = tuple(int(a) for a in args.mirror_axes.split(","))
        except ValueError:
            raise ValueError(f"--mirror-axes must be axes among 0,1,2 separated by commas, got {args.mirror_axes!r}") from None
    device = resolve_device(args.device)
    check_output_files([Path(args.output)] + ([Path(args.preview)] if args.preview else []), overwrite=args.overwrite,
                       flag="--overwrite")
    image = load_image(args.input)  # fail on bad inputs before loading weights
    from ..hub import from_pretrained

    if args.compile and args.no_compile:
        raise ValueError("--compile and --no-compile contradict each other")
    compile_mode = True if args.compile else False if args.no_compile else "auto"
    model = from_pretrained(args.weights)
    predictor = UniSegPredictor(
        model, device=device, sw_batch_size=args.sw_batch_size, overlap=1.0 - args.step, mirror=not args.no_mirror,
        spacing=spacing, progress=True, memory_limit_gb=args.memory_limit_gb, mirror_axes=mirror_axes,
        amp=args.amp, optimize=not args.no_optimize, compile=compile_mode,
    )
    task = args.task
    logger.debug("speed path: %s", predictor.path)
    result = predictor.predict_file(
        image, args.output, task=task, modality=args.modality, save_probabilities=args.save_probabilities,
        overwrite=args.overwrite,
    )
    logger.debug("speed path used: %s", predictor.path)
    tasks = "the model's only task" if result.tasks == [None] else f"tasks {result.tasks}"
    logger.info("wrote %s (%s, labels %s)", args.output, tasks, sorted(set(result.labels.ravel().tolist())))
    if args.preview:
        save_preview(args.preview, image.array[0], result.labels, spacing=image.spacing)
        logger.info("wrote %s", args.preview)
    return 0
