"""``uniseg-hub benchmark btcv|vs``: the paper's downstream experiment, pretrained against from scratch.

Reads BTCV or VS (public layout or nnU-Net raw layout) with the official split (:mod:`uniseg_hub.data`), plans and
preprocesses it the nnU-Net v1 way, transfers the upstream weights with an adapter strategy, fine-tunes with the
official recipe (or a JSON override), and, with ``--from-scratch``, trains the same architecture from random
initialisation with the same recipe. Writes ``benchmark.json`` and ``benchmark.md``: per-class Dice and HD95,
their means, wall time and peak memory of every run; each run's folder (``OUTPUT_DIR/<run>/``) ends with its
``final/`` model folder, which ``uniseg-hub predict --weights OUTPUT_DIR/<run>`` uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
from pathlib import Path
from typing import Any, Sequence

from .finetune import train_config_from_args

logger = logging.getLogger(__name__)

__all__ = ["register", "run", "run_benchmark", "format_markdown"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="BTCV / VS transfer benchmark: fine-tune pretrained (and from-scratch) and write a Dice/HD95 table",
        description="Run the official UniSeg downstream experiment on BTCV or VS with the official split and "
        "write benchmark.json + benchmark.md (per-class Dice, HD95, means, wall time, peak memory).",
    )
    p.add_argument("dataset", choices=["btcv", "vs"], help="which benchmark")
    p.add_argument("--data", required=True, metavar="FOLDER",
                   help="BTCV folder (RawData/Training/{img,label}) / VS folder (VS-SEG/vs_gk_N) or their nnU-Net raw folder")
    p.add_argument("--weights", default="uniseg-11task", metavar="NAME_OR_PATH", help="upstream UniSeg: hub id, folder or official .model")
    p.add_argument("--strategy", default="official", choices=["official", "keep-prompt", "prompt-tuning"])
    p.add_argument("--from-scratch", action="store_true", help="also train the same network from random initialisation")
    p.add_argument("-o", "--output-dir", default=None, help="default: benchmark_<dataset>_<strategy>")
    p.add_argument("--config", default=None, metavar="train.json", help="TrainConfig fields as JSON (defaults: official recipe)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patch-size", default=None, metavar="D,H,W", help="training patch (default: the upstream patch)")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N cases of the official train list")
    p.add_argument("--max-val", type=int, default=None, help="use only the first N cases of the official val list")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace earlier runs in OUTPUT_DIR")
    p.add_argument("--channels-last", action="store_true", help="lean training: channels-last + in-place norm (same results)")
    p.add_argument("--grad-checkpointing", action="store_true", help="lean training: activation checkpointing (less memory)")
    p.set_defaults(func=run)


def _fresh_copy(model, seed: int):
    """The same architecture as ``model`` (same class and config, so the same task ids and class names), randomly
    initialised from ``seed``, every parameter trainable."""
    import torch

    from ..config import UniSegConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(UniSegConfig.from_dict(model.config.to_dict()))
    fresh.config.provenance = {"transfer": {"strategy": "from scratch (random initialisation)", "seed": seed}}
    return fresh


def run_benchmark(
    dataset: str,
    data_dir: str | Path,
    weights: Any,
    *,
    strategy: str = "official",
    from_scratch: bool = False,
    train_config=None,
    output_dir: str | Path,
    max_train: int | None = None,
    max_val: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and write ``benchmark.json`` / ``benchmark.md`` into ``output_dir``.

    Args:
        dataset: ``"btcv"`` or ``"vs"``.
        data_dir: the data folder (see :func:`uniseg_hub.preprocessing.load_downstream`).
        weights: upstream UniSeg (instance, hub id, folder or official ``.model``).
        strategy: adapter strategy of :func:`uniseg_hub.models.adapters.from_upstream`.
        from_scratch: also train the same architecture from random init with the same recipe (for the prompt
            strategies: a randomly initialised UniSeg with every parameter trainable).
        train_config: :class:`~uniseg_hub.training.TrainConfig` (default: the official recipe); its
            ``output_dir`` is replaced by ``output_dir/<run>``.
        max_train, max_val: use only the first cases of each official list.

    Returns:
        the JSON-ready result: ``dataset``, ``strategy``, ``weights``, ``classes``, ``plan``, ``cases``,
        ``runs`` (per run: ``dice``, ``hd95``, ``mean_dice``, ``mean_hd95``, ``validation``, ``wall_time_s``,
        ``peak_memory_mb``, ``load_report``, ``model_dir``).
    """
    import torch

    from ..models.adapters import from_upstream
    from ..preprocessing import load_downstream
    from ..training import TrainConfig, finetune

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = train_config or TrainConfig()
    data = load_downstream(dataset, data_dir, max_train=max_train, max_val=max_val)
    names = data.task.class_names
    model = from_upstream(weights, task=data.task, plan=data.plan, strategy=strategy, patch_size=config.patch_size,
                          seed=config.seed)
    runs: dict[str, Any] = {}
    models = [("pretrained", model)]
    if from_scratch:
        models.append(("from_scratch", _fresh_copy(model, config.seed)))
    for run_name, net in models:
        logger.info("%s %s: training %s (%d train / %d val cases)", data.name, strategy, run_name, len(data.train), len(data.val))
        res = finetune(net, data.train, data.val, config.replace(output_dir=str(out / run_name)), overwrite=overwrite)
        report = getattr(net, "load_report", None)
        runs[run_name] = {
            "dice": res.dice, "hd95": res.hd95, "mean_dice": res.mean_dice, "mean_hd95": res.mean_hd95,
            "validation": res.validation, "wall_time_s": res.wall_time_s, "peak_memory_mb": res.peak_memory_mb,
            "epochs": len(res.history), "model_dir": res.model_dirs.get("final"),
            "load_report": report.summary() if (report is not None and run_name == "pretrained") else "random initialisation",
        }
    result = {
        "dataset": data.name,
        "strategy": strategy,
        "weights": str(weights) if not hasattr(weights, "config") else type(weights).__name__,
        "classes": names,
        "cases": {"train": [c.name for c in data.train], "val": [c.name for c in data.val]},
        "plan": data.plan.to_dict(),
        "recipe": config.to_dict() | {"output_dir": None},
        "machine": f"{platform.machine()}, torch {torch.__version__}, device {config.device or ('cuda' if torch.cuda.is_available() else 'cpu')}",
        "runs": runs,
    }
    (out / "benchmark.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "benchmark.md").write_text(format_markdown(result))
    logger.info("wrote %s and %s", out / "benchmark.json", out / "benchmark.md")
    return result


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_markdown(result: dict[str, Any]) -> str:
    """The Markdown table of a :func:`run_benchmark` result: one row per class, Dice and HD95 per run."""
    runs: dict[str, Any] = result["runs"]
    order: Sequence[str] = list(runs)
    head = ["class"] + [f"Dice {r}" for r in order] + [f"HD95 {r} (mm)" for r in order]
    lines = [
        f"# {result['dataset']} transfer benchmark ({result['strategy']}, weights {result['weights']})",
        "",
        f"{len(result['cases']['train'])} training / {len(result['cases']['val'])} validation cases "
        f"(official split); target spacing {result['plan']['spacing']} mm; {result['machine']}.",
        "",
        f"Validation: {next(iter(runs.values())).get('validation', '')}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in result["classes"]:
        cells = [_fmt(runs[r]["dice"].get(c)) for r in order] + [_fmt(runs[r]["hd95"].get(c), 2) for r in order]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join([f"**{_fmt(runs[r]['mean_dice'])}**" for r in order]
                                            + [f"**{_fmt(runs[r]['mean_hd95'], 2)}**" for r in order]) + " |")
    lines += ["", "| run | epochs | wall time (s) | peak memory (MB) |", "|---|---|---|---|"]
    for r in order:
        lines.append(f"| {r} | {runs[r]['epochs']} | {runs[r]['wall_time_s']:.1f} | {runs[r]['peak_memory_mb']:.0f} |")
    lines += ["", "Dice is `–` for a class absent from both prediction and reference in every case; HD95 is `–` "
              "unless the class is present in both.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config = train_config_from_args(args)
    out = Path(args.output_dir or f"benchmark_{args.dataset}_{args.strategy}")
    result = run_benchmark(args.dataset, args.data, args.weights, strategy=args.strategy, from_scratch=args.from_scratch,
                           train_config=config, output_dir=out, max_train=args.max_train, max_val=args.max_val,
                           overwrite=args.overwrite)
    for name, r in result["runs"].items():
        logger.info("%s: mean Dice %s, mean HD95 %s mm, %.0f s, %.0f MB", name, _fmt(r["mean_dice"]),
                    _fmt(r["mean_hd95"], 2), r["wall_time_s"], r["peak_memory_mb"])
    return 0
