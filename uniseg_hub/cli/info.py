"""``uniseg-hub info PATH``: what a checkpoint holds (format, network, tasks, preprocessing, parameter count)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run", "describe"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="describe weights: official .model, .safetensors, save_pretrained folder, fine-tuning run folder, registry name or hub id",
        description="Read weights safely (no pickled code runs) and print their network config, tasks, preprocessing "
        "contract and size. Registry names and hub ids are downloaded/cached first.",
    )
    p.add_argument("path", nargs="?", help="file, folder, registered name (see --list) or Hugging Face Hub id")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--list", action="store_true", help="list the registered weight names and exit")
    p.set_defaults(func=run)


def describe(path: str) -> dict:
    """A JSON-friendly description of the weights at ``path``, after checking that they fit their config (the same
    strict load as ``from_pretrained``: a config.json that disagrees with its weights is an error, not a summary)."""
    from ..hub import from_pretrained  # noqa: PLC0415 (keep `uniseg-hub --help` fast)

    model = from_pretrained(path)
    state, config = model.state_dict(), model.config
    return {
        "source": model.load_report.source if model.load_report is not None else str(path),
        "model": type(model).__name__,
        "num_tensors": len(state),
        "num_parameters": int(sum(v.numel() for v in state.values())),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in state.values()}),
        "config": config.to_dict(),
    }


def run(args: argparse.Namespace) -> int:
    if args.list:
        from ..hub import list_pretrained  # noqa: PLC0415

        sys.stdout.write("\n".join(list_pretrained()) + "\n")
        return 0
    if args.path is None:
        raise ValueError("expected PATH (a checkpoint file, folder, registered name or hub id), or --list")
    info = describe(args.path)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    cfg = info["config"]
    lines = [
        f"source:      {info['source']}",
        f"model:       {info['model']} ({cfg['name']})",
        f"parameters:  {info['num_parameters']:,} in {info['num_tensors']} tensors ({', '.join(info['dtypes'])})",
        f"patch size:  {cfg['patch_size']} (D, H, W); base features {cfg['base_num_features']}, cap {cfg['max_num_features']}",
        f"inputs:      stems for {cfg['input_channels']} channels; {cfg['num_classes']} output classes; {cfg['num_tasks']} tasks",
        f"spacing:     {cfg['preprocessing']['spacing']} mm (z, y, x)",
        "normalise:   " + "; ".join(f"{m}: {s['scheme']}" + (f" [{s['low']}, {s['high']}]" if s["scheme"] == "clip_rescale" else "")
                                    for m, s in cfg["preprocessing"]["normalization"].items()),
    ]
    if cfg["num_tasks"] == 0:
        lines += [f"task:        {t['name']} (prompt-free: no task id; {t['num_classes']} classes, {'+'.join(t['modalities'])}; "
                  f"labels {t['labels'] or 'unnamed'})" for t in cfg["tasks"]]
    else:
        lines += [f"task {i:2d}:     {t['name']} ({t['num_classes']} classes, {'+'.join(t['modalities'])})"
                  + (" [default]" if cfg.get("default_task") == i else "") for i, t in enumerate(cfg["tasks"])]
    if cfg["preprocessing"].get("source"):
        lines.append(f"plan:        {cfg['preprocessing']['source']}")
    prov = cfg.get("provenance") or {}
    if "transfer" in prov:
        t = prov["transfer"]
        lines.append(f"transfer:    {t.get('strategy')} from {t.get('upstream')}")
    if "finetuned" in prov:
        ft = prov["finetuned"]
        val = ft.get("validation") or {}
        dice = val.get("mean_dice", val.get("periodic_mean_dice"))
        lines.append(f"fine-tuned:  {ft.get('dataset')}, {ft.get('epochs')} epochs; validation mean Dice "
                     f"{dice if dice is None else round(dice, 4)} ({val.get('setting', '')})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
