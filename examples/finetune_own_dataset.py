"""Fine-tune pretrained UniSeg weights on your own data set in the nnU-Net raw layout, then predict with the result.

What it shows:
    * reading an nnU-Net raw folder (``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``, ``dataset.json``)
      with :func:`uniseg_hub.data.nnunet_raw_cases` and :func:`uniseg_hub.preprocessing.nnunet_raw_task` (class
      names, label values, modalities), planning it the nnU-Net v1 way (target spacing, intensity scheme) with
      :func:`~uniseg_hub.preprocessing.plan_dataset` and preprocessing it with :func:`~uniseg_hub.preprocessing.load_cases`;
    * the transfer :func:`uniseg_hub.models.adapters.from_upstream` (strategy ``official``: the prompt is dropped, new
      heads for the data set's classes; the plan and the class names go into the model's config) and its load report;
    * :func:`uniseg_hub.training.finetune` with a short :class:`~uniseg_hub.training.TrainConfig` (the official
      recipe otherwise): per-class Dice before (:func:`~uniseg_hub.training.evaluate`) and after (the final
      validation, through the predictor on the raw files);
    * the run folder it writes, used as it is: ``UniSegPredictor.from_pretrained(OUT_DIR)`` loads ``OUT_DIR/final``
      and segments a validation scan, with the data set's label values, on the scan's own grid.

Data: ``--data FOLDER`` with your own data set; without it a small one is written from the bundled MNI152 brain
(one case per hemisphere at 3 and 3.5 mm; labels CSF / grey matter / white matter; see ``examples/_bundled.py``).
The last ``--val`` cases (in ``dataset.json`` order; for the bundled set: the right hemispheres) validate, the
rest train.
The same run on the command line: ``uniseg-hub finetune --weights uniseg-demo --data FOLDER -o OUT --epochs 2 ...``.

CPU time: about 40 s (2 cores) with the defaults: 2 epochs x 6 iterations of 2 patches of 32x48x32, which shows
the mechanics only (Dice stays low); raise ``--epochs`` / ``--iterations`` (the official recipe: 100 x 250) for
real results.

Run:  python examples/finetune_own_dataset.py [--data FOLDER] [--epochs 2] [--iterations 6] [--out-dir finetune_out]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bundled import write_nnunet_raw_dataset  # noqa: E402

from uniseg_hub.models.adapters import STRATEGIES, from_upstream  # noqa: E402
from uniseg_hub.data import nnunet_raw_cases, read_dataset_json  # noqa: E402
from uniseg_hub.inference import UniSegPredictor  # noqa: E402
from uniseg_hub.preprocessing import load_cases, nnunet_raw_task, plan_dataset  # noqa: E402
from uniseg_hub.training import TrainConfig, evaluate, finetune  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="nnU-Net raw folder (default: write one from the bundled scan)")
    parser.add_argument("--weights", default="uniseg-demo", help="upstream UniSeg: registry name, folder or .model")
    parser.add_argument("--strategy", default="official", choices=STRATEGIES)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=6, help="iterations per epoch")
    parser.add_argument("--val", type=int, default=2, help="number of validation cases (the last ones)")
    parser.add_argument("--out-dir", default="finetune_out",
                        help="the run folder (final/ model, checkpoints, log, curves); an earlier run there is replaced")
    parser.add_argument("--spacings", default="3,3.5", help="bundled data set only: one case per hemisphere and spacing")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    root = Path(args.data) if args.data else write_nnunet_raw_dataset(
        Path(args.out_dir) / "MNI152Tissue_raw", spacings=tuple(float(s) for s in args.spacings.split(",")))
    task = nnunet_raw_task(root)                                  # classes, label values, modalities from dataset.json
    order = [Path(t["image"]).name.split(".nii")[0] for t in read_dataset_json(root).get("training", [])] or None
    raw = nnunet_raw_cases(root, names=order, num_channels=len(task.modalities))
    if not 0 < args.val < len(raw):
        raise ValueError(f"--val must leave at least one training case: {len(raw)} cases, --val {args.val}")
    plan = plan_dataset(raw[: -args.val], task.modalities)        # spacing and normalisation from the training cases
    train, val = load_cases(raw[: -args.val], plan, task), load_cases(raw[-args.val:], plan, task)
    print(f"{len(train)} training / {len(val)} validation cases at {plan.spacing} mm (z, y, x)")

    model = from_upstream(args.weights, task=task, plan=plan, strategy=args.strategy)
    print(model.load_report.summary())
    before = evaluate(model, val, device=args.device, hd95=False, sw_batch_size=4)

    config = TrainConfig(epochs=args.epochs, iterations_per_epoch=args.iterations, batch_size=2, val_every=args.epochs,
                         output_dir=args.out_dir, device=args.device, progress=False, amp=False, sw_batch_size=4)
    result = finetune(model, train, val, config, overwrite=True)

    names = task.class_names
    print(f"\n| class | Dice before | Dice after {args.epochs} epochs |\n|---|---|---|")
    for n in names:
        print(f"| {n} | {before['dice'][n]:.3f} | {result.dice[n]:.3f} |")
    print(f"| **mean** | **{before['mean_dice']:.3f}** | **{result.mean_dice:.3f}** |")
    print(f"(before: sliding window on the preprocessed arrays; after: {result.validation})")

    predictor = UniSegPredictor.from_pretrained(args.out_dir, device=args.device)   # loads OUT_DIR/final
    scan = val[0].meta["images"]
    seg = Path(args.out_dir) / f"{val[0].name}_seg.nii.gz"
    prediction = predictor.predict_file(scan, seg)
    print(f"\ntrained {result.wall_time_s:.0f} s; model folder {result.model_dirs['final']}; wrote {seg} "
          f"(labels {sorted(set(prediction.labels.ravel().tolist()))} on the grid of {Path(scan[0]).name})")
    return {"before": before, "result": result, "model": model, "val": val, "names": names, "data": root,
            "prediction": prediction, "segmentation": seg}


if __name__ == "__main__":
    main()
