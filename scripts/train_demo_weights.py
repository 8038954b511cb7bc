"""Train the small demonstration UniSeg whose weights ship as package data in ``uniseg_hub/registry/uniseg-demo/`` (run once; output committed).

Prompt-driven multi-task upstream training, the UniSeg recipe in miniature, through the library's own engine
(:func:`uniseg_hub.training.finetune`: per-sample task ids, each sample's loss on its own task's output channels,
the official optimiser, loss and nnU-Net augmentation): one network, one universal prompt, three tasks on real
brain scans that ship in packages (:mod:`uniseg_hub.demo.data`): MNI152 grey/white matter (nilearn), Colin27
brain mask and Colin27 AAL lobes (Debian mricron-data), at 3 mm. The scans are written as nnU-Net raw data sets
and preprocessed by :mod:`uniseg_hub.preprocessing` with the model's contract (3 mm, MR z-score over the crop
box), the same path ``uniseg-hub predict`` takes. Training uses the left hemispheres only; the right hemispheres
are the validation set (and stay unseen by ``make demo`` too). Two deviations from the downstream recipe, for
multi-task training on a CPU budget: a short run, and mirroring left-right only (a flipped brain is still a brain;
an upside-down one would make the lobes ambiguous).

This is a demonstration model, not the authors' weights: it knows three brain MR tasks, nothing about CT.

Usage::

    python scripts/train_demo_weights.py --out uniseg_hub/registry/uniseg-demo      # ~20 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from uniseg_hub import UniSeg
from uniseg_hub.demo.data import DEMO_SPACING, UPSTREAM_TASKS, demo_model_config, mricron_dir, task_cases
from uniseg_hub.training import AugmentationConfig, TrainConfig, finetune

logger = logging.getLogger("train_demo_weights")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="uniseg_hub/registry/uniseg-demo", help="folder written with the model's save_pretrained")
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--iterations", type=int, default=40, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if mricron_dir() is None:
        raise SystemExit("the demo weights need mricron-data (Colin27 + AAL): apt-get install mricron-data")

    config = demo_model_config(DEMO_SPACING)
    recipe = TrainConfig(epochs=args.epochs, iterations_per_epoch=args.iterations, batch_size=args.batch_size,
                         val_every=args.val_every, seed=args.seed, progress=False, device="cpu",
                         augmentation=AugmentationConfig(mirror_axes=[2]))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train, val = task_cases([t.name for t in UPSTREAM_TASKS], Path(tmp) / "data", config.preprocessing, DEMO_SPACING)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = UniSeg(config)
        model.config.provenance["license"] = {"license": "apache-2.0"}  # this project's weights (the card says so)
        run = Path(tmp) / "run"
        result = finetune(model, train, val, recipe.replace(output_dir=str(run)))
        logger.info("trained in %.0f s: validation (right hemispheres, %s) mean Dice %.3f", result.wall_time_s,
                    result.validation, result.mean_dice)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for f in (run / "final").iterdir():  # config.json (contract, tasks, provenance), model.safetensors, README.md
            shutil.copyfile(f, out / f.name)
    card = {
        "what": "uniseg-demo: a DEMONSTRATION UniSeg trained on three brain-MR tasks from public template scans; "
                "not the authors' weights, not for clinical or research use beyond the demo",
        "tasks": [t.name for t in UPSTREAM_TASKS],
        "data": {"tissue": "MNI152 2009a sym T1 + GM/WM maps (PyPI nilearn 0.14.1)",
                 "brain": "Colin27 ch2 / ch2bet (Debian mricron-data)",
                 "lobes": "Colin27 ch2 + AAL grouped into 6 lobes (Debian mricron-data)"},
        "split": "train: left hemispheres (world x < 0); validation: right hemispheres",
        "spacing_mm": DEMO_SPACING,
        "recipe": recipe.to_dict() | {"output_dir": None},
        "engine": "uniseg_hub.training.finetune (multi-task: per-sample task ids, loss on each task's own channels)",
        "validation": result.validation,
        "validation_dice": result.dice,
        "validation_mean_dice": result.mean_dice,
        "wall_time_s": result.wall_time_s,
        "total_time_s": time.perf_counter() - t0,
        "history": result.history,
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {args.threads} threads",
        "made_by": "scripts/train_demo_weights.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (out / "demo_training.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    logger.info("wrote %s (%.2f MB)", out, size / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
