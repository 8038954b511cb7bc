"""``uniseg-hub finetune``: transfer the pretrained UniSeg to a downstream data set and fine-tune it.

Data come from an nnU-Net raw folder (``imagesTr/``, ``labelsTr/``, ``dataset.json``) or, with ``--benchmark``,
from a BTCV / VS folder with its official split; they are planned and preprocessed by :mod:`uniseg_hub.data`.

Under ``torchrun --nproc_per_node=N -m uniseg_hub finetune ...`` every process runs this command and joins one
data-parallel run (``--batch-size`` per process; see ``docs/distributed.md``); rank 0 alone logs and writes.
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("-o", "--output-dir", required=True, help="checkpoints, logs, curves and result.json go here")
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
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})


def load_training_data(args: argparse.Namespace):
    """``(train cases, val cases, {label: name}, in_channels, modalities)`` for the command line's data options."""
    from ..data import load_cases, load_downstream, nnunet_raw_cases, plan_dataset, read_dataset_json

    if args.benchmark:
        data = load_downstream(args.benchmark, args.data, max_train=args.max_train, max_val=args.max_val)
        return data.train, data.val, data.labels, data.in_channels, list(data.plan.modalities)
    root = Path(args.data)
    meta = read_dataset_json(root)
    if meta is None:
        raise FileNotFoundError(f"no dataset.json in {root}: expected an nnU-Net raw folder (imagesTr/, labelsTr/, dataset.json)")
    modalities = [str(meta["modality"][k]) for k in sorted(meta.get("modality", {"0": "CT"}), key=int)] or ["CT"]
    labels = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
    if len(labels) < 2:
        raise ValueError(f"{root / 'dataset.json'}: 'labels' must name background and at least one class, found {labels}")
    raw = nnunet_raw_cases(root, num_channels=len(modalities))
    if len(raw) < 2:
        raise ValueError(f"{root}: need at least 2 cases to split into training and validation, found {len(raw)}")
    n_val = min(len(raw) - 1, max(1, round(len(raw) * args.val_fraction)))
    raw_train, raw_val = raw[:-n_val][: args.max_train], raw[-n_val:][: args.max_val]
    plan = plan_dataset(raw_train, modalities, source=f"nnU-Net v1 planning of {len(raw_train)} cases of {root}")
    return load_cases(raw_train, plan), load_cases(raw_val, plan), labels, len(modalities), modalities


def run(args: argparse.Namespace) -> int:
    from ..adapters import freeze_encoder, from_upstream
    from ..training import finetune

    main_process = int(os.environ.get("RANK", "0")) == 0  # torchrun: only rank 0 logs and writes
    if not main_process:
        logging.getLogger("uniseg_hub").setLevel(logging.WARNING)
    config = train_config_from_args(args, lr=args.lr, layer_decay=args.layer_decay, output_dir=str(args.output_dir))
    train, val, labels, in_channels, modalities = load_training_data(args)
    num_classes = max(labels) + 1
    model = from_upstream(args.weights, num_classes=num_classes, in_channels=in_channels, strategy=args.strategy,
                          patch_size=config.patch_size, modalities=modalities)
    if args.freeze_encoder:
        freeze_encoder(model)
    model.load_report.log(logger)
    names = [labels.get(c, str(c)) for c in range(1, num_classes)]
    result = finetune(model, train, val, config, resume=args.resume, class_names=names)
    if not main_process:
        return 0
    out = Path(args.output_dir)
    summary = {k: v for k, v in result.to_dict().items() if k != "history"}
    summary.update(strategy=args.strategy, weights=str(args.weights), epochs=len(result.history),
                   load_report=model.load_report.summary())
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("mean validation Dice %.4f, HD95 %.2f mm; results in %s", result.mean_dice, result.mean_hd95, out / "result.json")
    return 0
