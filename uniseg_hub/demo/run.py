"""``make demo`` / ``python -m uniseg_hub.demo``: the whole UniSeg cycle in miniature, on real scans, on a CPU.

1. **Upstream** (done once by ``scripts/train_demo_weights.py``, result shipped as package data in
   ``uniseg_hub/registry/uniseg-demo/``, registry name ``uniseg-demo``):
   a small UniSeg (same architecture family: nnU-Net v1 UNet + universal prompt + fusion layer; 8-64 features,
   3 mm) trained prompt-driven on three tasks: MNI152 grey/white matter, Colin27 brain mask, Colin27 AAL lobes.
2. **Data**: a task the upstream model never saw, Colin27 deep grey matter (AAL caudate, putamen, pallidum,
   thalamus), written as an nnU-Net raw data set (left hemisphere: training case; right hemisphere: validation
   case, unseen by any training step, upstream or downstream) and planned the nnU-Net v1 way.
3. **Transfer** the embedded weights with the official adapter (:func:`uniseg_hub.models.adapters.from_upstream`,
   strategy ``official``: prompt and old heads dropped, new heads drawn from the seed) and **fine-tune** it and the
   same network from scratch with the same budget and recipe (:func:`uniseg_hub.training.finetune`).
4. **Use** what the fine-tunes wrote: each run folder's ``final/`` model segments the raw validation scan through
   :class:`~uniseg_hub.inference.UniSegPredictor` (the Dice in the table is that prediction's, on the raw grid).
5. **Report**: the Dice table on stdout, ``demo_results.{json,md}``, a preview (reference / pretrained / from
   scratch, with a legend) and learning curves in the output folder.

Every random draw (new heads, patch sampling, augmentation) comes from ``--seed``: the same seed and thread count
print the same table. ``--seeds N`` runs seeds ``0..N-1`` and reports each class's Dice as mean ± sd over seeds,
the paired difference pretrained − from scratch and how many seeds pretrained won; ``docs/demo/`` holds the
committed multi-seed record (``demo_seeds.json``) that README quotes.

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
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..models.adapters import from_upstream
from ..config import TaskSpec, UniSegConfig
from .data import DEMO_SPACING, DOWNSTREAM_TASK, UPSTREAM_TASKS, ensure_mricron, write_task_dataset
from .figures import comparison_preview, learning_curves
from ..inference import UniSegPredictor
from ..preprocessing import load_cases, load_image, load_label, plan_dataset
from ..training import AugmentationConfig, TrainConfig, finetune

__all__ = ["DEFAULT_WEIGHTS", "RECORD", "DemoBudget", "demo_train_config", "downstream_task", "run_demo", "run_seeds",
           "summarise_seeds", "format_table", "format_seeds_table", "main"]

logger = logging.getLogger(__name__)

#: The embedded demo weights (written by ``scripts/train_demo_weights.py``).
DEFAULT_WEIGHTS = "uniseg-demo"  # the registry name of the embedded weights (package data)
#: The committed multi-seed record (``python -m uniseg_hub.demo --seeds 5 --record docs/demo/demo_seeds.json``).
RECORD = Path(__file__).resolve().parents[2] / "docs" / "demo" / "demo_seeds.json"
DISCLAIMER = ("uniseg-demo is a DEMONSTRATION model trained on three template brains by "
              "scripts/train_demo_weights.py; it is not the authors' UniSeg weights.")
RUNS = ("pretrained", "from_scratch")


@dataclass
class DemoBudget:
    """Training budget shared by both runs: ``epochs`` x ``iterations`` of ``batch_size`` patches."""

    epochs: int = 20
    iterations: int = 25
    batch_size: int = 2
    val_every: int = 4


def demo_train_config(budget: DemoBudget, output_dir: str | Path | None, seed: int = 0) -> TrainConfig:
    """The official recipe (SGD 0.99 Nesterov, lr 1e-2 poly, Dice+CE with deep supervision, nnU-Net sampling and
    augmentation) with the demo's short budget and left-right mirroring only (as upstream: a brain flipped upside
    down is not a brain); identical for the pretrained and the from-scratch run."""
    return TrainConfig(epochs=budget.epochs, iterations_per_epoch=budget.iterations, batch_size=budget.batch_size,
                       val_every=budget.val_every, output_dir=str(output_dir) if output_dir else None, seed=seed,
                       progress=False, device="cpu", augmentation=AugmentationConfig(mirror_axes=[2]))


def downstream_task(mricron: Path | None) -> tuple[TaskSpec, str]:
    """The downstream task and a sentence on what it shows (held-out task, or nilearn-only fallback)."""
    if mricron is not None:
        return DOWNSTREAM_TASK, ("held-out task: Colin27 deep grey matter (AAL caudate, putamen, pallidum, thalamus), "
                                 "never seen upstream")
    return UPSTREAM_TASKS[0], ("nilearn-only fallback: MNI152 grey/white matter, one of the upstream tasks "
                               "(shows re-learning new heads, not transfer to a new task)")


def _scratch(pretrained: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same architecture and config (plan, class names), randomly initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = type(pretrained)(UniSegConfig.from_dict(pretrained.config.to_dict()))
    model.config.provenance = {"transfer": {"strategy": "from scratch (random initialisation)", "seed": seed}}
    return model


def _resumed(run_dir: Path) -> list[int]:
    log = run_dir / "log.json"
    return list(json.loads(log.read_text()).get("resumed_after_epochs", [])) if log.is_file() else []


def run_demo(
    output_dir: str | Path,
    weights: Any = DEFAULT_WEIGHTS,
    budget: DemoBudget | None = None,
    *,
    install: bool = True,
    seed: int = 0,
    spacing: float = DEMO_SPACING,
    mricron: Path | None | str = "auto",
    figures: bool = True,
) -> dict[str, Any]:
    """One seed: transfer the demo weights to the downstream task, fine-tune pretrained vs from scratch, predict.

    Args:
        output_dir: where the data set, both run folders, previews, curves and ``demo_results.{json,md}`` go
            (an earlier demo there is replaced).
        weights: the upstream demo model (folder written by ``save_pretrained``, a hub id, or a UniSeg).
        budget: the training budget of each run (default :class:`DemoBudget`).
        install: try ``apt-get install mricron-data`` when it is missing (root and apt-get only).
        seed: every random draw of both runs (new heads / initialisation, sampling, augmentation).
        mricron: ``"auto"`` finds (or installs) mricron-data; ``None`` forces the nilearn-only part; or a folder.

    Returns:
        ``{"task", "note", "classes", "runs": {"pretrained": ..., "from_scratch": ...}, "files": [...], ...}``; each
        run holds the final validation (the run's ``final/`` model through the predictor on the raw right
        hemisphere, Dice on its grid) and its history.
    """

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
    left, right = write_task_dataset(task.name, out / "data", spacing, mricron)
    plan = plan_dataset([left], task.modalities, source=f"nnU-Net v1 plan of the training case {left.name}")
    train, val = load_cases([left], plan, task), load_cases([right], plan, task)

    pretrained = from_upstream(weights, task=task, plan=plan, strategy="official", seed=seed)
    models = {"pretrained": pretrained, "from_scratch": _scratch(pretrained, seed)}
    image = load_image(right.images)
    reference = load_label(right.label, image)
    runs, labels = {}, {}
    for name in RUNS:
        logger.info("fine-tuning %s: %d epochs x %d iterations, seed %d", name, budget.epochs, budget.iterations, seed)
        res = finetune(models[name], train, val, demo_train_config(budget, out / name, seed), overwrite=True)
        runs[name] = {"dice": res.dice, "hd95": res.hd95, "mean_dice": res.mean_dice, "mean_hd95": res.mean_hd95,
                      "validation": res.validation, "wall_time_s": res.wall_time_s, "model_dir": res.model_dirs["final"],
                      "history": res.history}
        prediction = UniSegPredictor.from_pretrained(out / name).predict(image)  # the run folder's final/ model
        lut = {v: i for i, v in enumerate(task.label_values)}
        labels[name] = np.vectorize(lut.get)(prediction.labels)
    files = []
    if figures:
        ref_idx = np.vectorize({v: i for i, v in enumerate(task.label_values)}.get)(reference)
        captions = {k.replace("_", " "): f"mean Dice {runs[k]['mean_dice']:.3f}" for k in RUNS}
        files.append(comparison_preview(
            out / "preview.png", image.array[0], {"reference": ref_idx, "pretrained": labels["pretrained"],
                                                  "from scratch": labels["from_scratch"]},
            task.class_names, spacing=image.spacing, captions=captions,
            title=f"{task.name}, validation scan {right.name} (seed {seed}, {budget.epochs}x{budget.iterations} iterations)"))
        files.append(learning_curves(out / "curves.png", {k: [runs[k]["history"]] for k in RUNS},
                                     resumed_at={k: _resumed(out / k) for k in RUNS},
                                     title=f"{task.name}: pretrained vs from scratch, seed {seed}"))
    result = {
        "disclaimer": DISCLAIMER,
        "task": task.name,
        "note": note,
        "mricron": mricron_note,
        "classes": task.class_names,
        "seed": seed,
        "split": "train: left hemisphere; validation: right hemisphere (unseen by any training step)",
        "plan": plan.to_dict(),
        "budget": asdict(budget),
        "weights": str(weights) if not isinstance(weights, torch.nn.Module) else type(weights).__name__,
        "load_report": pretrained.load_report.summary(),
        "threads": torch.get_num_threads(),
        "runs": runs,
        "files": files,
        "total_time_s": time.perf_counter() - t0,
    }
    (out / "demo_results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "demo_results.md").write_text(format_table(result) + "\n")
    return result


# ---------------------------------------------------------------------------------------------------------------
# Several seeds
# ---------------------------------------------------------------------------------------------------------------
def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"), "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "n": int(v.size)}


def summarise_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per class and for the mean Dice: mean ± sd over seeds of each run, the paired difference pretrained − from
    scratch (mean ± sd) and how many seeds pretrained won (a class absent from both maps in a seed is skipped)."""
    classes = results[0]["classes"]
    out: dict[str, Any] = {"seeds": [r["seed"] for r in results], "classes": {}}
    for key in [*classes, "mean"]:
        per_run = {name: [r["runs"][name]["mean_dice"] if key == "mean" else r["runs"][name]["dice"].get(key) for r in results]
                   for name in RUNS}
        diff = [a - b for a, b in zip(per_run["pretrained"], per_run["from_scratch"])
                if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
        out["classes"][key] = {**{name: _mean_sd(v) for name, v in per_run.items()}, "difference": _mean_sd(diff),
                               "pretrained_wins": int(sum(d > 0 for d in diff)), "n": len(diff),
                               "per_seed": {name: v for name, v in per_run.items()}}
    return out


def _pm(s: dict[str, float], digits: int = 3) -> str:
    if not math.isfinite(s["mean"]):
        return "–"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['sd']:.{digits}f}" if math.isfinite(s["sd"]) else "")


def format_seeds_table(summary: dict[str, Any], header: str = "") -> str:
    """The Markdown table of :func:`summarise_seeds`."""
    n = len(summary["seeds"])
    lines = [header, ""] if header else []
    lines += [f"| class | Dice pretrained (mean ± sd, {n} seeds) | Dice from scratch | paired difference | pretrained better |",
              "|---|---|---|---|---|"]
    for key, row in summary["classes"].items():
        name = "**mean**" if key == "mean" else key
        lines.append(f"| {name} | {_pm(row['pretrained'])} | {_pm(row['from_scratch'])} | "
                     f"{_pm(row['difference'])} | {row['pretrained_wins']}/{row['n']} |")
    return "\n".join(lines)


def run_seeds(output_dir: str | Path, seeds: Sequence[int], weights: Any = DEFAULT_WEIGHTS, budget: DemoBudget | None = None,
              *, install: bool = True, mricron: Path | None | str = "auto", record: str | Path | None = None) -> dict[str, Any]:
    """:func:`run_demo` for every seed (``output_dir/seed<k>/``), then :func:`summarise_seeds`, learning curves
    with the spread over seeds, and ``demo_seeds.{json,md}`` (also written to ``record`` when given)."""
    out = Path(output_dir)
    results = [run_demo(out / f"seed{s}", weights, budget, install=install, seed=s, mricron=mricron) for s in seeds]
    summary = summarise_seeds(results)
    curves = learning_curves(out / "curves_seeds.png", {k: [r["runs"][k]["history"] for r in results] for k in RUNS},
                             title=f"{results[0]['task']}: pretrained vs from scratch over {len(results)} seeds")
    first = results[0]
    record_data = {
        "what": "uniseg_hub demo, pretrained vs from scratch over seeds (python -m uniseg_hub.demo --seeds N)",
        "disclaimer": DISCLAIMER, "task": first["task"], "note": first["note"], "split": first["split"],
        "budget": first["budget"], "weights": first["weights"], "plan": first["plan"], "threads": first["threads"],
        "machine": f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}",
        "summary": summary,
        "per_seed": [{"seed": r["seed"], "total_time_s": r["total_time_s"],
                      "runs": {k: {kk: v for kk, v in r["runs"][k].items() if kk != "model_dir"} for k in RUNS}} for r in results],
        "files": [str(curves)],
    }
    text = json.dumps(record_data, indent=2, default=str) + "\n"
    (out / "demo_seeds.json").write_text(text)
    table = format_seeds_table(summary, f"UniSeg demo — {first['task']} ({first['note']}), {len(results)} seeds")
    (out / "demo_seeds.md").write_text(table + "\n")
    if record is not None:  # the record names its figures relative to itself (they are copied next to it)
        rec = Path(record)
        rec.parent.mkdir(parents=True, exist_ok=True)
        (rec.parent / "curves_seeds.png").write_bytes(Path(curves).read_bytes())
        (rec.parent / f"preview_seed{seeds[0]}.png").write_bytes((out / f"seed{seeds[0]}" / "preview.png").read_bytes())
        rec.write_text(json.dumps(record_data | {"files": ["curves_seeds.png", f"preview_seed{seeds[0]}.png"]},
                                  indent=2, default=str) + "\n")
    return record_data


# ---------------------------------------------------------------------------------------------------------------
# Tables and the command line
# ---------------------------------------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """The Markdown Dice table of a :func:`run_demo` result (pretrained vs from scratch, same budget and seed)."""
    runs = result["runs"]
    b = result["budget"]
    p, s = runs["pretrained"], runs["from_scratch"]
    lines = [
        f"UniSeg demo — {result['task']}: {result['note']}",
        f"{result['disclaimer']}",
        f"validation: {result['split']}; scored: {p.get('validation', '')}",
        f"seed {result.get('seed', 0)}; {b['epochs']} epochs x {b['iterations']} iterations x batch {b['batch_size']} per run",
        "",
        "| class | Dice pretrained | Dice from scratch | HD95 pretrained (mm) | HD95 from scratch (mm) |",
        "|---|---|---|---|---|",
    ]
    for c in result["classes"]:
        lines.append(f"| {c} | {_f(p['dice'].get(c))} | {_f(s['dice'].get(c))} | {_f(p['hd95'].get(c), 1)} | {_f(s['hd95'].get(c), 1)} |")
    lines.append(f"| **mean** | **{_f(p['mean_dice'])}** | **{_f(s['mean_dice'])}** | {_f(p['mean_hd95'], 1)} | {_f(s['mean_hd95'], 1)} |")
    lines.append(f"| wall time (s) | {p['wall_time_s']:.0f} | {s['wall_time_s']:.0f} | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m uniseg_hub.demo", description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output-dir", default="build/demo", help="data, runs, previews, curves and results (default build/demo)")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="upstream demo weights: a registry name, folder or hub id (default: the embedded uniseg-demo)")
    p.add_argument("--epochs", type=int, default=DemoBudget().epochs)
    p.add_argument("--iterations", type=int, default=DemoBudget().iterations, help="iterations per epoch")
    p.add_argument("--seed", type=int, default=0, help="the seed of every random draw (one-seed run)")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="run seeds 0..N-1 and report mean ± sd")
    p.add_argument("--record", default=None, metavar="JSON", help="with --seeds: also write the record here (e.g. docs/demo/demo_seeds.json)")
    p.add_argument("--no-install", action="store_true", help="never try apt-get install mricron-data")
    p.add_argument("--nilearn-only", action="store_true", help="skip mricron-data even when it is installed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = DemoBudget(epochs=args.epochs, iterations=args.iterations, val_every=max(1, args.epochs // 5))
    mricron = None if args.nilearn_only else "auto"
    try:
        if args.seeds is not None:
            if args.seeds < 1:
                raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
            record = run_seeds(args.output_dir, list(range(args.seeds)), args.weights, budget, install=not args.no_install,
                               mricron=mricron, record=args.record)
            sys.stdout.write("\n" + (Path(args.output_dir) / "demo_seeds.md").read_text() + "\n")
            sys.stdout.write(f"per-seed results and figures in {args.output_dir}/seed*/ and {record['files'][0]}\n")
            return 0
        result = run_demo(args.output_dir, args.weights, budget, install=not args.no_install, seed=args.seed, mricron=mricron)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    sys.stdout.write("\n" + format_table(result) + "\n\n")
    sys.stdout.write(f"preview and curves: {', '.join(result['files'])}; total {result['total_time_s']:.0f} s\n")
    if RECORD.is_file():
        sys.stdout.write(f"one seed varies: the multi-seed record (mean ± sd over seeds) is {RECORD} (README's table)\n")
    return 0

