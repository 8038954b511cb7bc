"""Add a new task to UniSeg's universal prompt and train only that task's prompt map (and the heads).

What it shows:
    * :func:`uniseg_hub.models.adapters.from_upstream` with ``strategy="prompt-tuning"``: the network gets one more task
      (``model.config.default_task``); encoder, fusion, decoder and the old task maps are frozen (the old maps become a
      buffer, so no optimiser can move them); only ``prompt.prompt_new`` and the segmentation heads learn;
    * the load report's ``frozen`` list and the trainable parameter count;
    * :func:`uniseg_hub.training.finetune` on cases of the new task, and the check that every frozen tensor is
      bit-identical after training while the new prompt map moved;
    * the model still answers the old tasks by id (``model(x, task_id=0)``) and the new one by ``model.config.default_task``.

Data: the bundled MNI152 brain at 3 mm, left hemisphere to train, right hemisphere to validate; new task
``csf_gm_wm`` (CSF / grey / white matter), weights ``uniseg-demo`` (tasks ``tissue``, ``brain``, ``lobes``).

CPU time: about 25 s (2 cores) with the defaults: 2 epochs x 4 iterations, enough to show what moves and what
stays frozen, not to learn the task (raise ``--epochs`` / ``--iterations`` for that).

Run:  python examples/prompt_tuning.py [--epochs 2] [--iterations 4] [--out-dir prompt_tuning_out]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bundled import DATASET_LABELS, tissue_cases  # noqa: E402

from uniseg_hub import TaskSpec  # noqa: E402
from uniseg_hub.models.adapters import from_upstream  # noqa: E402
from uniseg_hub.training import TrainConfig, finetune  # noqa: E402
from uniseg_hub.training.sampling import crop_with_padding  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="uniseg-demo", help="upstream UniSeg: registry name, folder or .model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=4, help="iterations per epoch")
    parser.add_argument("--out-dir", default="prompt_tuning_out", help="checkpoints, log.csv, curves.png")
    args = parser.parse_args(argv)

    names = [DATASET_LABELS[str(c)] for c in range(1, len(DATASET_LABELS))]
    task = TaskSpec("csf_gm_wm", len(DATASET_LABELS), ["MR"], {k: v for k, v in DATASET_LABELS.items() if k != "0"})
    model = from_upstream(args.weights, task=task, strategy="prompt-tuning")
    tid = model.config.default_task
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    print(f"new task id {tid} ({model.config.tasks[tid].name}); trainable: {sorted(trainable)} "
          f"= {sum(trainable.values()):,} of {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"{len(model.load_report.frozen)} frozen entries")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    train, val = tissue_cases(model.config.preprocessing.spacing[0], task_id=tid)
    config = TrainConfig(epochs=args.epochs, iterations_per_epoch=args.iterations, batch_size=2, val_every=args.epochs,
                         output_dir=args.out_dir, device="cpu", progress=False, amp=False, sw_batch_size=4)
    result = finetune(model, train, val, config)

    after = model.state_dict()
    changed = sorted(k for k in after if not torch.equal(before[k], after[k]))
    print(f"tensors changed by training: {changed}")
    for n in names:
        print(f"{n:>20}: Dice {result.dice[n]:.3f} (task {tid}, right hemisphere)")
    x = torch.as_tensor(crop_with_padding(val[0].image, [0, 0, 0], model.config.patch_size))[None]  # one patch
    with torch.no_grad():
        old, new = model.eval()(x, task_id=0), model(x, task_id=tid)
    print(f"one patch: old task 0 -> {tuple(old.shape)}, new task {tid} -> {tuple(new.shape)}")
    return {"model": model, "result": result, "changed": changed, "trainable": trainable, "before": before}


if __name__ == "__main__":
    main()
