"""Train the small demonstration UniSeg whose weights ship in ``weights/uniseg-demo/`` (run once; output committed).

Prompt-driven multi-task upstream training, the UniSeg recipe in miniature: one network, one universal prompt,
three tasks on real brain scans that ship in packages (:mod:`uniseg_hub.demo_data`): MNI152 grey/white matter
(nilearn), Colin27 brain mask and Colin27 AAL lobes (Debian mricron-data), at 3 mm. Training uses the left
hemispheres only; the right hemispheres are the validation set (and stay unseen by ``make demo`` too).
The recipe is the fine-tuning engine's (:class:`uniseg_hub.training.TrainConfig`: SGD 0.99 Nesterov, poly lr,
Dice+CE with deep supervision, nnU-Net augmentation, its patch sampler) with a short budget and two changes for
multi-task training: each sample's loss uses only its own task's first ``num_classes`` output channels (a task
never pushes down the channels another task uses), and mirroring is left-right only (a flipped brain is still a
brain; an upside-down one would make the lobes ambiguous).

This is a demonstration model, not the authors' weights: it knows three brain MR tasks, nothing about CT.

Usage::

    python scripts/train_demo_weights.py --out weights/uniseg-demo
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from uniseg_hub import UniSeg
from uniseg_hub.demo_data import DEMO_SPACING, UPSTREAM_TASKS, demo_model_config, mricron_dir, task_cases
from uniseg_hub.training import DeepSupervisionLoss, PatchSampler, TrainConfig, evaluate
from uniseg_hub.training.augment import augment_batch, build_augmentation

logger = logging.getLogger("train_demo_weights")


def train_multitask(model: UniSeg, train, val, recipe: TrainConfig) -> dict:
    """Prompt-driven multi-task training: per-sample task ids, loss on each sample's own task channels."""
    classes = [t.num_classes for t in model.config.tasks]
    sampler = PatchSampler(train, model.config.patch_size, recipe.oversample_foreground)
    pipeline = build_augmentation(recipe)
    rng = np.random.default_rng(recipe.seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                          weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / recipe.epochs) ** recipe.poly_exponent)
    loss_fn = DeepSupervisionLoss(recipe.dice_weight, recipe.ce_weight, batch_dice=False)
    history, t0 = [], time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        model.set_deep_supervision(True)
        losses = []
        for _ in range(recipe.iterations_per_epoch):
            batch = sampler.sample(rng, recipe.batch_size)
            x, y = augment_batch(pipeline, batch.images, batch.labels, rng)
            outs = model(x, torch.tensor(batch.task_ids))
            loss = sum(loss_fn([o[i:i + 1, :classes[t]] for o in outs], y[i:i + 1]) for i, t in enumerate(batch.task_ids))
            loss = loss / len(batch.task_ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            losses.append(loss.item())
        sched.step()
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "time_s": time.perf_counter() - t0}
        if (epoch + 1) % recipe.val_every == 0 or epoch + 1 == recipe.epochs:
            model.set_deep_supervision(False)
            res = evaluate(model, val, hd95=False)
            rec.update(val_mean_dice=res["mean_dice"], val_dice=res["dice"])
            logger.info("epoch %d: val Dice %s", epoch + 1, {k: round(v, 3) for k, v in res["dice"].items()})
        logger.info("epoch %d/%d: train loss %.4f (%.0f s)", epoch + 1, recipe.epochs, rec["train_loss"], rec["time_s"])
        history.append(rec)
    model.set_deep_supervision(False)
    return {"history": history, "dice": history[-1]["val_dice"], "mean_dice": history[-1]["val_mean_dice"],
            "wall_time_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="weights/uniseg-demo", help="folder written with model.save_pretrained")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--iterations", type=int, default=40, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if mricron_dir() is None:
        raise SystemExit("the demo weights need mricron-data (Colin27 + AAL): apt-get install mricron-data")

    config = demo_model_config(DEMO_SPACING)
    train, val = task_cases([t.name for t in UPSTREAM_TASKS], DEMO_SPACING)
    torch.manual_seed(args.seed)
    model = UniSeg(config)
    recipe = TrainConfig(epochs=args.epochs, iterations_per_epoch=args.iterations, batch_size=args.batch_size,
                         val_every=args.val_every, seed=args.seed, progress=False, mirror_axes=[2])
    result = train_multitask(model, train, val, recipe)
    logger.info("trained in %.0f s: validation (right hemispheres) mean Dice %.3f", result["wall_time_s"], result["mean_dice"])

    model.eval()
    out = Path(args.out)
    model.save_pretrained(out)
    card = {
        "what": "uniseg-demo: a DEMONSTRATION UniSeg trained on three brain-MR tasks from public template scans; "
                "not the authors' weights, not for clinical or research use beyond the demo",
        "tasks": [t.name for t in UPSTREAM_TASKS],
        "data": {"tissue": "MNI152 2009a sym T1 + GM/WM maps (PyPI nilearn 0.14.1)",
                 "brain": "Colin27 ch2 / ch2bet (Debian mricron-data)",
                 "lobes": "Colin27 ch2 + AAL grouped into 6 lobes (Debian mricron-data)"},
        "split": "train: left hemispheres (world x < 0); validation: right hemispheres",
        "spacing_mm": DEMO_SPACING,
        "recipe": recipe.to_dict() | {"output_dir": None, "loss": "per sample, on its own task channels"},
        "validation_dice": result["dice"],
        "validation_mean_dice": result["mean_dice"],
        "wall_time_s": result["wall_time_s"],
        "history": result["history"],
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {args.threads} threads",
        "made_by": "scripts/train_demo_weights.py",
    }
    (out / "demo_training.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    logger.info("wrote %s (%.2f MB)", out, size / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
