"""``uniseg-hub convert IN.model OUT_DIR``: official nnU-Net v1 checkpoint → ``save_pretrained`` folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official UniSeg/nnU-Net v1 checkpoint (.model + .model.pkl) to config.json + model.safetensors",
        description="Read an official checkpoint without executing pickled code, check it loads strictly into the "
        "matching uniseg_hub network, and write a save_pretrained folder (config.json, model.safetensors, README.md).",
    )
    p.add_argument("checkpoint", type=Path, help="the official .model file (its .model.pkl must sit next to it, or use --plans)")
    p.add_argument("out_dir", type=Path, help="output folder")
    p.add_argument("--plans", type=Path, default=None, help="the trainer/plans pickle if not CHECKPOINT.pkl")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import convert_nnunet_v1  # noqa: PLC0415 (keep `uniseg-hub --help` fast)

    out = convert_nnunet_v1(args.checkpoint, args.out_dir, plans_path=args.plans)
    logger.info("wrote %s", out)
    return 0
