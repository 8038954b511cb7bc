"""``uniseg-hub finetune``: transfer the pretrained UniSeg to a downstream data set and fine-tune it.

Data come from an nnU-Net raw folder (``imagesTr/``, ``labelsTr/``, ``dataset.json``) or, with ``--benchmark``,
from a BTCV / VS folder with its official split; they are planned (nnU-Net v1 rules) and preprocessed by
:mod:`uniseg_hub.preprocessing`. The plan, the class names and the modalities go into the model's config, so the
model folder the run ends with (``OUTPUT_DIR/final/``) is used by ``uniseg-hub predict --weights OUTPUT_DIR``
with exactly the preprocessing it was trained with.

Under ``torchrun --nproc_per_node=N -m uniseg_hub finetune ...`` every process runs this command and joins one
data-parallel run (``--batch-size`` per process; see ``docs/distributed.md``); rank 0 alone logs and writes.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune pretrained UniSeg weights on a downstream data set (official recipe by default)",
        description="Transfer UniSeg weights with an adapter strategy (official backbone transfer, keep-prompt or "
        "prompt-tuning) and fine-tune with the official downstream recipe; every recipe value can be "
        "overridden by a JSON config (fields of uniseg_hub.training.TrainConfig).",
    )
    p.add_argument("--weights", required=True, metavar="NAME_OR_PATH", help="upstream UniSeg: hub id, folder or official .model")
    p.add_argument("--data", required=True, metavar="FOLDER", help="nnU-Net raw folder (or BTCV/VS folder with --benchmark)")
    p.add_argument("--benchmark", choices=["btcv", "vs"], default=None, help="use the benchmark reader and its official split")
    p.add_argument("-o", "--output-dir", required=True,
                   help="the run folder: final/ and best/ model folders, checkpoints, logs, curves, result.json")
    p.add_argument("--strategy", default="official", choices=["official", "keep-prompt", "prompt-tuning"])
    p.add_argument("--config", default=None, metavar="train.json", help="TrainConfig fields as JSON (defaults: official recipe)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=None, help="patches per iteration (per process under torchrun)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay factor, e.g. 0.75")
    p.add_argument("--patch-size", default=None, metavar="D,H,W", help="training patch (default: the upstream patch)")
    p.add_argument("--freeze-encoder", action="store_true", help="train only the decoder and heads")
    p.add_argument("--val-fraction", type=float, default=0.2, help="nnU-Net raw data: last fraction of cases used for validation")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training cases")
    p.add_argument("--max-val", type=int, default=None, help="use only the first N validation cases")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint_latest.pt")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an OUTPUT_DIR that holds an earlier run")
    lean = p.add_argument_group("lean training (same results; see benchmarks/README.md)")
    lean.add_argument("--channels-last", action="store_true",
                      help="channels-last layout + in-place norm/activation: ~1.35x faster steps on CPU, less memory")
    lean.add_argument("--grad-checkpointing", action="store_true",
                      help="recompute activations in the backward pass: much lower peak memory for one more forward")
    p.set_defaults(func=run)


def parse_patch(text: str | None) -> list[int] | None:
    """``--patch-size D,H,W`` → ``[D, H, W]`` (``None`` stays ``None``); a clear error otherwise."""
    if text is None:
        return None
    try:
        patch = [int(v) for v in text.split(",")]
    except ValueError:
        patch = []
    if len(patch) != 3:
        raise ValueError(f"--patch-size must be three integers D,H,W, got {text!r}")
    return patch


def train_config_from_args(args: argparse.Namespace, **extra):
    """The :class:`~uniseg_hub.training.TrainConfig` of the command line: ``--config`` file (or defaults) with the
    budget options (and ``extra``) that were given on top; options left unset keep the file's/default values."""
    from ..training import TrainConfig

    overrides = dict(epochs=args.epochs, iterations_per_epoch=args.iterations, batch_size=args.batch_size,
                     device=args.device, seed=args.seed, patch_size=parse_patch(args.patch_size), **extra)
    if args.no_progress:
        overrides["progress"] = False
    for flag in ("channels_last", "grad_checkpointing"):
        if getattr(args, flag, False):
            overrides[flag] = True
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})


def load_training_data(args: argparse.Namespace):
    """``(train cases, val cases, task, plan)`` for the command line's data options: the benchmark's official
    split, or an nnU-Net raw folder (the last ``--val-fraction`` of its cases validate)."""
    from ..data import nnunet_raw_cases
    from ..preprocessing import load_cases, load_downstream, nnunet_raw_task, plan_dataset

    if args.benchmark:
        data = load_downstream(args.benchmark, args.data, max_train=args.max_train, max_val=args.max_val)
        return data.train, data.val, data.task, data.plan
    root = Path(args.data)
    task = nnunet_raw_task(root)
    raw = nnunet_raw_cases(root, num_channels=len(task.modalities))
    if len(raw) < 2:
        raise ValueError(f"{root}: need at least 2 cases to split into training and validation, found {len(raw)}")
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    n_val = min(len(raw) - 1, max(1, round(len(raw) * args.val_fraction)))
    raw_train, raw_val = raw[:-n_val][: args.max_train], raw[-n_val:][: args.max_val]
    plan = plan_dataset(raw_train, task.modalities, source=f"nnU-Net v1 plan of {len(raw_train)} training cases of {root.name}")
    return load_cases(raw_train, plan, task), load_cases(raw_val, plan, task), task, plan


def run(args: argparse.Namespace) -> int:
    from ..models.adapters import freeze_encoder, from_upstream
    from ..resources import resolve_device
    from ..training import check_run_folder, finetune

    main_process = int(os.environ.get("RANK", "0")) == 0  # torchrun: only rank 0 logs and writes
    if not main_process:
        logging.getLogger("uniseg_hub").setLevel(logging.WARNING)
    config = train_config_from_args(args, lr=args.lr, layer_decay=args.layer_decay, output_dir=str(args.output_dir))
    resolve_device(config.device)  # before any work: a missing GPU is an error now, not after loading the data
    if main_process:
        check_run_folder(args.output_dir, resume=args.resume, overwrite=args.overwrite)
    train, val, task, plan = load_training_data(args)
    model = from_upstream(args.weights, task=task, plan=plan, strategy=args.strategy, patch_size=config.patch_size,
                          seed=config.seed)
    if args.freeze_encoder:
        freeze_encoder(model)
    model.load_report.log(logger)
    result = finetune(model, train, val, config, resume=args.resume, overwrite=args.overwrite)
    if main_process:
        out = Path(args.output_dir)
        logger.info("final validation (%s): mean Dice %.4f, HD95 %.2f mm", result.validation, result.mean_dice, result.mean_hd95)
        logger.info("model folder: %s  ->  uniseg-hub predict --weights %s -i SCAN.nii.gz -o SEG.nii.gz", out / "final", out)
    return 0
