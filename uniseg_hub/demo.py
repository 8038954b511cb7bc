"""``make demo`` / ``python -m uniseg_hub.demo``: the whole UniSeg cycle in miniature, on real scans, on a CPU.

1. **Upstream** (done once by ``scripts/train_demo_weights.py``, result embedded in ``weights/uniseg-demo/``):
   a small UniSeg (same architecture family: nnU-Net v1 UNet + universal prompt + fusion layer; 8-64 features,
   3 mm) trained prompt-driven on three tasks: MNI152 grey/white matter, Colin27 brain mask, Colin27 AAL lobes.
2. **Transfer** the embedded weights with the official adapter (:func:`uniseg_hub.adapters.from_upstream`,
   strategy ``official``: prompt and old heads dropped, new heads) to a task the upstream model never saw:
   Colin27 deep grey matter (AAL caudate, putamen, pallidum, thalamus).
3. **Fine-tune** the transferred model and the same network from scratch with the same budget and recipe
   (:func:`uniseg_hub.training.finetune`). Training data: the left hemisphere; validation: the right
   hemisphere, which no training step (upstream or downstream) has seen.
4. **Report**: the Dice table on stdout, ``demo_results.{json,md}``, PNG previews and curves in the output folder.

Without Debian ``mricron-data`` (and no way to install it) the demo runs the nilearn-only part: the downstream
task is then MNI152 grey/white matter, which was one of the upstream tasks (so it shows re-learning new heads, not
transfer to a new task); the table says so.

``uniseg-demo`` is a demonstration model trained on three template brains, **not the authors' UniSeg weights**.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .config import TaskSpec, UniSegConfig
from .demo_data import DEMO_SPACING, DOWNSTREAM_TASK, UPSTREAM_TASKS, ensure_mricron, task_cases
from .preview import render_preview
from .training import TrainConfig, finetune, predict_volume

__all__ = ["DEFAULT_WEIGHTS", "DemoBudget", "demo_train_config", "downstream_task", "run_demo", "format_table",
           "plot_comparison", "main"]

logger = logging.getLogger(__name__)

#: The embedded demo weights (written by ``scripts/train_demo_weights.py`` with ``save_pretrained``).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "uniseg-demo"
DISCLAIMER = ("uniseg-demo is a DEMONSTRATION model trained on three template brains by "
              "scripts/train_demo_weights.py; it is not the authors' UniSeg weights.")


@dataclass
class DemoBudget:
    """Training budget shared by both runs: ``epochs`` x ``iterations`` of ``batch_size`` patches."""

    epochs: int = 40
    iterations: int = 30
    batch_size: int = 2
    val_every: int = 10


def demo_train_config(budget: DemoBudget, output_dir: str | Path | None, seed: int = 0) -> TrainConfig:
    """The official recipe (SGD 0.99 Nesterov, lr 1e-2 poly, Dice+CE with deep supervision, augmentation) with the
    demo's short budget, half the patches on foreground and left-right mirroring only (as upstream); identical for
    the pretrained and the from-scratch run."""
    return TrainConfig(epochs=budget.epochs, iterations_per_epoch=budget.iterations, batch_size=budget.batch_size,
                       val_every=budget.val_every, output_dir=str(output_dir) if output_dir else None, seed=seed,
                       progress=False, oversample_foreground=0.5, mirror_axes=[2])


def downstream_task(mricron: Path | None) -> tuple[TaskSpec, str]:
    """The downstream task and a sentence on what it shows (held-out task, or nilearn-only fallback)."""
    if mricron is not None:
        return DOWNSTREAM_TASK, ("held-out task: Colin27 deep grey matter (AAL caudate, putamen, pallidum, thalamus), "
                                 "never seen upstream")
    return UPSTREAM_TASKS[0], ("nilearn-only fallback: MNI152 grey/white matter, one of the upstream tasks "
                               "(shows re-learning new heads, not transfer to a new task)")


def _load_weights(weights: Any) -> Any:
    """Pass a model or hub id through; check that a weights folder holds what ``save_pretrained`` writes."""
    if isinstance(weights, torch.nn.Module):
        return weights
    path = Path(weights)
    if (path.is_dir() or path == DEFAULT_WEIGHTS) and not (path / "config.json").is_file():
        raise FileNotFoundError(f"demo weights not found: expected {path / 'config.json'} and {path / 'model.safetensors'} "
                                "(written by scripts/train_demo_weights.py; run from a clone of the repository or pass --weights)")
    return str(weights)


def run_demo(
    output_dir: str | Path,
    weights: Any = DEFAULT_WEIGHTS,
    budget: DemoBudget | None = None,
    *,
    install: bool = True,
    seed: int = 0,
    spacing: float = DEMO_SPACING,
    mricron: Path | None | str = "auto",
) -> dict[str, Any]:
    """Transfer the demo weights to the downstream task and fine-tune pretrained vs from scratch.

    Args:
        output_dir: where runs, previews, curves and ``demo_results.{json,md}`` go.
        weights: the upstream demo model (folder written by ``save_pretrained``, a hub id, or a UniSeg).
        budget: the training budget of each run (default :class:`DemoBudget`).
        install: try ``apt-get install mricron-data`` when it is missing (root and apt-get only).
        mricron: ``"auto"`` finds (or installs) mricron-data; ``None`` forces the nilearn-only part; or a folder.

    Returns:
        ``{"task", "note", "classes", "runs": {"pretrained": ..., "from_scratch": ...}, "files": [...], ...}``.
    """
    from .adapters import from_upstream

    t0 = time.perf_counter()
    budget = budget or DemoBudget()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if mricron == "auto":
        mricron, mricron_note = ensure_mricron(install)
    else:
        mricron_note = "mricron-data disabled" if mricron is None else f"mricron-data from {mricron}"
        mricron = Path(mricron) if mricron is not None else None
    logger.info("%s", mricron_note)
    task, note = downstream_task(mricron)
    train, val = task_cases([task.name], spacing, task_ids=[None], mricron=mricron)
    names = [task.labels[str(c)] for c in range(1, task.num_classes)]

    pretrained = from_upstream(_load_weights(weights), num_classes=task.num_classes, in_channels=1, strategy="official")
    torch.manual_seed(seed)
    scratch = type(pretrained)(UniSegConfig.from_dict(pretrained.config.to_dict()))
    runs, preds = {}, {}
    for run_name, model in (("pretrained", pretrained), ("from_scratch", scratch)):
        logger.info("fine-tuning %s: %d epochs x %d iterations", run_name, budget.epochs, budget.iterations)
        res = finetune(model, train, val, demo_train_config(budget, out / run_name, seed), class_names=names)
        runs[run_name] = {"dice": res.dice, "hd95": res.hd95, "mean_dice": res.mean_dice, "mean_hd95": res.mean_hd95,
                          "wall_time_s": res.wall_time_s, "peak_memory_mb": res.peak_memory_mb, "history": res.history}
        model.eval()
        preds[run_name] = [predict_volume(model, c.image).argmax(0).numpy().astype(np.int16) for c in val]
    files = [str(write_preview(out / "preview.png", val[0], preds)),
             str(plot_comparison({k: v["history"] for k, v in runs.items()}, out / "curves.png"))]
    result = {
        "disclaimer": DISCLAIMER,
        "task": task.name,
        "note": note,
        "mricron": mricron_note,
        "classes": names,
        "split": "train: left hemisphere; validation: right hemisphere (unseen by any training step)",
        "spacing_mm": spacing,
        "budget": asdict(budget),
        "weights": str(weights) if not isinstance(weights, torch.nn.Module) else type(weights).__name__,
        "load_report": pretrained.load_report.summary(),
        "runs": runs,
        "files": files,
        "total_time_s": time.perf_counter() - t0,
    }
    (out / "demo_results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "demo_results.md").write_text(format_table(result) + "\n")
    return result


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """The Markdown Dice table of a :func:`run_demo` result (pretrained vs from scratch, same budget)."""
    runs = result["runs"]
    b = result["budget"]
    lines = [
        f"UniSeg demo — {result['task']}: {result['note']}",
        f"{result['disclaimer']}",
        f"validation: {result['split']}; {b['epochs']} epochs x {b['iterations']} iterations x batch {b['batch_size']} per run",
        "",
        "| class | Dice pretrained | Dice from scratch | HD95 pretrained (mm) | HD95 from scratch (mm) |",
        "|---|---|---|---|---|",
    ]
    for c in result["classes"]:
        p, s = runs["pretrained"], runs["from_scratch"]
        lines.append(f"| {c} | {_f(p['dice'].get(c))} | {_f(s['dice'].get(c))} | {_f(p['hd95'].get(c), 1)} | {_f(s['hd95'].get(c), 1)} |")
    p, s = runs["pretrained"], runs["from_scratch"]
    lines.append(f"| **mean** | **{_f(p['mean_dice'])}** | **{_f(s['mean_dice'])}** | {_f(p['mean_hd95'], 1)} | {_f(s['mean_hd95'], 1)} |")
    lines.append(f"| wall time (s) | {p['wall_time_s']:.0f} | {s['wall_time_s']:.0f} | | |")
    return "\n".join(lines)


def write_preview(path: Path, case, preds: dict[str, Sequence[np.ndarray]]) -> Path:
    """Rows of orthogonal slices through the first validation case: reference, then each run's prediction."""
    image, ref = case.image[0], case.label
    center = np.argwhere(ref > 0).mean(0).round().astype(int) if (ref > 0).any() else None
    rows = [("reference", ref)] + [(name, p[0]) for name, p in preds.items()]
    tiles = [render_preview(image, lab, spacing=case.spacing, center=center, height=200) for _, lab in rows]
    width = max(t.width for t in tiles) + 130
    canvas = Image.new("RGB", (width, sum(t.height + 6 for t in tiles)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (name, _), tile in zip(rows, tiles):
        draw.text((6, y + tile.height // 2), name, fill=(255, 255, 255))
        canvas.paste(tile, (130, y))
        y += tile.height + 6
    canvas.save(path, format="PNG")
    return path


def plot_comparison(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """Two panels (training loss; validation mean Dice) with one line per run, drawn with Pillow."""
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    img = Image.new("RGB", (720, 520), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    panels = (("training loss", "train_loss", (60, 30, 700, 240)), ("validation mean Dice", "val_mean_dice", (60, 290, 700, 500)))
    for title, key, (x0, y0, x1, y1) in panels:
        series = {n: [(h["epoch"], h[key]) for h in hist if h.get(key) is not None and math.isfinite(h[key])]
                  for n, hist in histories.items()}
        pts = [p for s in series.values() for p in s]
        draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        draw.text((x0, y0 - 16), title, fill=(0, 0, 0))
        if not pts:
            continue
        ex = (min(p[0] for p in pts), max(p[0] for p in pts))
        vy = (min(p[1] for p in pts), max(p[1] for p in pts))
        vy = (vy[0], vy[1] + 1e-6) if vy[1] > vy[0] else (vy[0] - 0.5, vy[0] + 0.5)
        draw.text((x0 - 55, y0), f"{vy[1]:.3f}", fill=(0, 0, 0))
        draw.text((x0 - 55, y1 - 10), f"{vy[0]:.3f}", fill=(0, 0, 0))
        draw.text((x1 - 60, y1 + 4), f"epoch {ex[1]}", fill=(0, 0, 0))

        def xy(e: float, v: float) -> tuple[float, float]:
            fx = (e - ex[0]) / (ex[1] - ex[0]) if ex[1] > ex[0] else 0.5
            return x0 + 8 + fx * (x1 - x0 - 16), y1 - 8 - (v - vy[0]) / (vy[1] - vy[0]) * (y1 - y0 - 16)

        for i, (name, s) in enumerate(series.items()):
            c = colours[i % len(colours)]
            line = [xy(e, v) for e, v in s]
            if len(line) > 1:
                draw.line(line, fill=c, width=2)
            for px, py in line:
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=c)
            draw.text((x0 + 10 + 140 * i, y0 + 6), name, fill=c)
    img.save(path, format="PNG")
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m uniseg_hub.demo", description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output-dir", default="build/demo", help="runs, previews, curves and results (default build/demo)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="upstream demo weights (default: the embedded ones)")
    p.add_argument("--epochs", type=int, default=DemoBudget().epochs)
    p.add_argument("--iterations", type=int, default=DemoBudget().iterations, help="iterations per epoch")
    p.add_argument("--no-install", action="store_true", help="never try apt-get install mricron-data")
    p.add_argument("--nilearn-only", action="store_true", help="skip mricron-data even when it is installed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = DemoBudget(epochs=args.epochs, iterations=args.iterations, val_every=max(1, args.epochs // 4))
    try:
        result = run_demo(args.output_dir, args.weights, budget, install=not args.no_install, seed=args.seed,
                          mricron=None if args.nilearn_only else "auto")
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    sys.stdout.write("\n" + format_table(result) + "\n\n")
    sys.stdout.write(f"previews and curves: {', '.join(result['files'])}; total {result['total_time_s']:.0f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
