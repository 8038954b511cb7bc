"""A tiny fine-tuning run for tests/test_distributed.py, launched by torchrun (or imported and run in-process).

``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUT --batch-size 1 [--resume]``
fine-tunes the tiny official UniSeg (backbone transfer, random heads seeded with 0) on two noisy spheres and
writes ``OUT/final.pt`` (state dict and history) from rank 0. Test-only hook: with ``UNISEG_TEST_KILL_RANK=r``
in the environment, rank ``r`` kills itself with SIGKILL after epoch ``UNISEG_TEST_KILL_EPOCH`` (default 1).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from uniseg_hub.models.adapters import from_upstream
from uniseg_hub.data import Case
from uniseg_hub.training import AugmentationConfig, TrainConfig, finetune

TINY_MODEL = Path(__file__).parent / "fixtures" / "uniseg_reference" / "tiny_upstream.model"


def sphere_case(name: str, shape=(36, 72, 72), centre=(18, 36, 36), radius=10, seed=0) -> Case:
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    label = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2).astype(np.int64)
    image = (label + 0.3 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)[None]
    return Case(name, image, label, (1.0, 1.0, 1.0))


def run(output_dir: str | os.PathLike, batch_size: int, *, epochs: int = 2, resume: bool = False, on_epoch_end=None):
    """The run every test compares: augmentation on (rotation, zoom, intensity, mirroring), batch Dice, deep
    supervision, gradient clipping; returns ``(model, TrainResult)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every torchrun worker (OMP_NUM_THREADS=1); restored for in-process callers
    try:
        return _run(output_dir, batch_size, epochs=epochs, resume=resume, on_epoch_end=on_epoch_end)
    finally:
        torch.set_num_threads(threads)


def _run(output_dir, batch_size: int, *, epochs: int, resume: bool, on_epoch_end):
    train = [sphere_case("t0", seed=0), sphere_case("t1", seed=1, centre=(16, 30, 40))]
    val = [sphere_case("v0", (32, 64, 64), (16, 32, 32), seed=2), sphere_case("v1", (32, 64, 64), (18, 30, 34), seed=3)]
    torch.manual_seed(0)
    model = from_upstream(TINY_MODEL, num_classes=2)
    cfg = TrainConfig(epochs=epochs, iterations_per_epoch=2, batch_size=batch_size, patch_size=[32, 64, 64],
                      augmentation=AugmentationConfig(p_rot=0.5, p_scale=0.5, p_noise=0.5, p_gamma=0.5, p_contrast=0.5),
                      lr=0.05, val_every=epochs, progress=False, seed=3, device="cpu", output_dir=str(output_dir))
    result = finetune(model, train, val, cfg, resume=resume, overwrite=not resume, on_epoch_end=on_epoch_end)
    return model, result


def _kill_hook():
    rank, victim = int(os.environ.get("RANK", "0")), os.environ.get("UNISEG_TEST_KILL_RANK")
    after = int(os.environ.get("UNISEG_TEST_KILL_EPOCH", "1"))
    if victim is None or int(victim) != rank:
        return None

    def hook(record):
        if record["epoch"] == after:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    model, result = run(args.output_dir, args.batch_size, epochs=args.epochs, resume=args.resume, on_epoch_end=_kill_hook())
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"model": model.state_dict(), "history": result.history, "dice": result.dice},
                   Path(args.output_dir) / "final.pt")


if __name__ == "__main__":
    main()
