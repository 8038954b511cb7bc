"""Fine-tuning step benchmark: step time and peak memory, with and without activation checkpointing.

One step = forward with deep supervision, Dice+CE loss over the scales
(:class:`uniseg_hub.training.losses.DeepSupervisionLoss`), backward, grad-norm clip 12, SGD (momentum 0.99,
Nesterov), as the official trainer. Each configuration runs in its own child process, so its peak memory is
the child's own ``ru_maxrss`` (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA), unaffected by the others.

Configurations (``--variants``): ``eager`` (the plain network, baseline), ``fast``
(:func:`uniseg_hub.models.perf.optimize_for_training`), ``lowmem`` (in-place norm+activation in channels-last layout,
``optimize_for_training(inplace_norm_act=True, channels_last=True)``), ``compile`` (``fast`` + ``torch.compile`` of forward and
backward, compiled during the warm-up step), ``<eager|fast|lowmem|compile>_ckpt[_l<N>]`` (+ activation
checkpointing of encoder and decoder stages via :func:`uniseg_hub.models.perf.set_grad_checkpointing`; only the ``N``
finest resolution levels with ``_l<N>``), ``amp_bf16`` / ``amp_fp16``
(``fast`` under ``torch.autocast``, default on CUDA; fp16 with a ``GradScaler``). Every configuration starts from the same weights,
input and labels; the max abs difference of the first step's logits and gradients to the baseline is reported.

Usage::

    python benchmarks/train_step.py                          # full 64x192x192 patch, batch 1
    python benchmarks/train_step.py --patch 32 64 64 --base 8 --repeats 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_common_args, env_info, median, peak_rss_gib, print_table, run_child, setup_threads, synchronize, write_json  # noqa: E402

log = logging.getLogger("benchmarks.train_step")

CPU_VARIANTS = ["eager", "fast", "fast_ckpt", "lowmem", "lowmem_ckpt"]
CUDA_VARIANTS = ["eager", "fast", "fast_ckpt", "lowmem_ckpt", "amp_bf16", "amp_fp16"]
#: ``<eager|fast|lowmem|compile>[_ckpt[_l<levels>]]``: ``lowmem`` is ``fast`` + in-place norm+act in channels-last
#: layout (``optimize_for_training(inplace_norm_act=True, channels_last=True)``), ``compile`` is
#: ``fast`` + ``torch.compile`` (forward and backward; compiled in the warm-up step); ``_l<N>`` checkpoints
#: only the N finest resolution levels (default all); ``amp_*`` are ``fast`` under autocast.
VARIANT_RE = re.compile(r"(?P<base>eager|fast|lowmem|compile)(?P<ckpt>_ckpt(?:_l(?P<levels>[1-9]))?)?|amp_bf16|amp_fp16")


def variant_name(text: str) -> str:
    """argparse type: a valid variant name."""
    if not VARIANT_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"unknown variant {text!r}: use <eager|fast|lowmem|compile>[_ckpt[_l<N>]], amp_bf16 or amp_fp16"
        )
    return text


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in this process; save first-step logits/grads to ``args.dump``; return the record."""
    from uniseg_hub import UniSeg, UniSegConfig
    from uniseg_hub.models.perf import optimize_for_training, set_grad_checkpointing
    from uniseg_hub.training.losses import DeepSupervisionLoss

    setup_threads(args.threads)
    device = torch.device(args.device)
    variant = args.child
    torch.manual_seed(0)
    cfg = UniSegConfig.uniseg_11task(patch_size=args.patch, base_num_features=args.base, deep_supervision=True)
    model = UniSeg(cfg).to(device).train()
    m = VARIANT_RE.fullmatch(variant)
    if m["base"] != "eager":
        optimize_for_training(model, inplace_norm_act=m["base"] == "lowmem", channels_last=m["base"] == "lowmem",
                              compile=m["base"] == "compile")
    if m["ckpt"]:
        levels = int(m["levels"]) if m["levels"] else None
        set_grad_checkpointing(model, True, levels=levels)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, *cfg.patch_size, generator=gen).to(device)
    y = torch.randint(0, cfg.num_classes, (args.batch, *cfg.patch_size), generator=gen).to(device)
    task = torch.arange(args.batch) % cfg.num_tasks
    loss_fn = DeepSupervisionLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    amp = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(variant)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(dump: bool = False) -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x, task)
            loss = loss_fn(out, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        if dump:
            torch.save(
                dict(logits=out[0].detach().float().cpu(),
                     grads={k: p.grad.detach().float().cpu() for k, p in model.named_parameters() if p.grad is not None}),
                args.dump,
            )
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return float(loss)

    times, cpu, losses = [], [], []
    for i in range(args.warmup + args.repeats):
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step(dump=i == 0 and args.dump is not None))
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    rec = dict(variant=variant, step_s_runs=times, median_s=median(times), min_s=min(times), cpu_s=median(cpu),
               losses=losses, peak_rss_gib=peak_rss_gib())
    if device.type == "cuda":
        rec["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return rec


def compare(dump: str, ref: dict[str, Any] | None) -> tuple[float | None, float | None, dict[str, Any]]:
    """Max abs diff of first-step logits and of gradients (relative to the largest gradient) to ``ref``."""
    data = torch.load(dump, weights_only=True)
    if ref is None:
        return 0.0, 0.0, data
    d_logits = float((data["logits"].double() - ref["logits"].double()).abs().max())
    scale = max(float(g.abs().max()) for g in ref["grads"].values())
    d_grad = max(float((data["grads"][k].double() - g.double()).abs().max()) for k, g in ref["grads"].items()) / scale
    return d_logits, d_grad, ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 192, 192], metavar=("D", "H", "W"))
    parser.add_argument("--base", type=int, default=32, help="base_num_features (32 = the official network)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", nargs="+", type=variant_name, default=None,
                        help=f"default: {CPU_VARIANTS} on CPU, {CUDA_VARIANTS} on CUDA; the first is the baseline")
    parser.add_argument("--child", type=variant_name, help=argparse.SUPPRESS)
    parser.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    add_common_args(parser, repeats=2, warmup=1)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(child(args)) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    variants = args.variants or (CUDA_VARIANTS if torch.device(args.device).type == "cuda" else CPU_VARIANTS)
    record: dict[str, Any] = dict(benchmark="train_step", env=env_info(args.device), args=vars(args), results=[])
    passthrough = ["--patch", *map(str, args.patch), "--base", str(args.base), "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--device", args.device]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    ref = None
    with tempfile.TemporaryDirectory(prefix="uniseg_train_step_") as tmp:
        for v in variants:
            dump = str(Path(tmp) / f"{v}.pt")
            log.info("running %s", v)
            rec = run_child(Path(__file__).resolve(), ["--child", v, "--dump", dump, *passthrough])
            rec["max_abs_diff_logits"], rec["max_rel_diff_grads"], ref = compare(dump, ref)
            record["results"].append(rec)
    base = record["results"][0]
    mem_key = "peak_cuda_gib" if "peak_cuda_gib" in base else "peak_rss_gib"
    for rec in record["results"]:
        rec["speedup_vs_" + base["variant"]] = base["median_s"] / rec["median_s"]
        rec["memory_vs_" + base["variant"]] = rec[mem_key] / base[mem_key]
        m = VARIANT_RE.fullmatch(rec["variant"])
        if m["ckpt"]:
            plain = next((r for r in record["results"] if r["variant"] == m["base"]), None)
            if plain is not None:
                rec["ckpt_time_cost_pct"] = 100.0 * (rec["median_s"] / plain["median_s"] - 1)
                rec["ckpt_memory_cut_pct"] = 100.0 * (1 - rec[mem_key] / plain[mem_key])
    record["env"]["loadavg_end"] = env_info(args.device)["loadavg"]
    cols = ["variant", "median_s", "min_s", "cpu_s", f"speedup_vs_{base['variant']}", mem_key, f"memory_vs_{base['variant']}",
            "ckpt_time_cost_pct", "ckpt_memory_cut_pct", "max_abs_diff_logits", "max_rel_diff_grads"]
    if "peak_cuda_gib" in base:
        cols.insert(4, "peak_rss_gib")
    print_table(
        record["results"],
        cols,
        title=f"UniSeg training step, patch {args.patch}, base {args.base}, batch {args.batch}, {args.device}, "
        f"load {record['env']['loadavg']} -> {record['env']['loadavg_end']}",
    )
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
