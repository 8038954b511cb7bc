"""Forward-pass benchmark of the full UniSeg patch network: eager vs fast paths vs MONAI ``DynUNet``.

Measured in one run, interleaved (each repeat times every variant once, so load drifts hit all alike):

* ``eager``     — the plain float32 network, pinned to the official one by the parity tests (baseline a);
* ``fast``      — :func:`uniseg_hub.models.perf.optimize_for_inference` defaults (group-norm instance norm, fused
  upsample+concat, pointwise heads);
* ``fast_cl``   — ``fast`` + ``channels_last_3d`` (``--variants`` to include);
* ``compile``   — ``fast`` + :func:`uniseg_hub.models.perf.try_compile` (one graph, inductor freezing: oneDNN convs
  with pre-packed weights in channels-last layout, fused norm+activation; compile time reported separately);
* ``amp_fp16`` / ``amp_bf16`` — ``fast`` under ``torch.autocast`` (default on CUDA; on CPU via ``--variants``);
* ``dynunet``   — MONAI ``DynUNet`` with the same kernels, strides and filters (baseline b).

Achieved GFLOP/s use :mod:`torch.utils.flop_counter` FLOPs (of the eager network for every UniSeg variant) and
are compared with a lone 64-channel 3x3x3 ``conv3d`` measured in the same run, before and after the variants
(the faster is the ceiling): ``pct_of_conv3d_ceiling`` against that conv in the default contiguous layout (the
issue's definition), ``pct_of_best_layout_ceiling`` against the faster of contiguous and ``channels_last_3d``.

Usage::

    python benchmarks/forward.py                                   # full 64x192x192 patch, batch 1 and 2
    python benchmarks/forward.py --patch 32 64 64 --base 8 --repeats 2 --json /tmp/fwd.json   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    add_common_args,
    conv3d_ceiling,
    count_flops,
    env_info,
    max_abs_diff,
    median,
    print_table,
    setup_threads,
    synchronize,
    write_json,
)

from uniseg_hub import UniSeg, UniSegConfig  # noqa: E402
from uniseg_hub.models.perf import optimize_for_inference  # noqa: E402

log = logging.getLogger("benchmarks.forward")

CPU_VARIANTS = ["eager", "fast", "compile", "dynunet"]
CUDA_VARIANTS = ["eager", "fast", "amp_fp16", "amp_bf16", "dynunet"]
ALL_VARIANTS = ["eager", "fast", "fast_cl", "compile", "amp_fp16", "amp_bf16", "dynunet"]


def build_dynunet(cfg: UniSegConfig) -> torch.nn.Module:
    """MONAI ``DynUNet`` with UniSeg's kernels, strides, filters, norm and activation (no prompt, no deep sup.)."""
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=cfg.num_classes,
        kernel_size=cfg.conv_kernel_sizes,
        strides=cfg.stage_strides,
        upsample_kernel_size=cfg.pool_op_kernel_sizes,
        filters=cfg.stage_channels,
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        res_block=False,
        deep_supervision=False,
    )


def make_variant(name: str, eager: UniSeg, example: tuple, device: str) -> tuple[torch.nn.Module, Callable, dict]:
    """(model, call(x) -> output, extra info) for one variant."""
    info: dict[str, Any] = {}
    dev_type = torch.device(device).type
    if name == "dynunet":
        model = build_dynunet(eager.config).to(device).eval()
        return model, lambda x: model(x), info
    if name == "eager":
        return eager, lambda x: eager(x, 0), info
    model = copy.deepcopy(eager)
    if name in ("fast", "amp_fp16", "amp_bf16"):
        optimize_for_inference(model)
    elif name == "fast_cl":
        optimize_for_inference(model, channels_last=True)
        return model, lambda x: model(x.contiguous(memory_format=torch.channels_last_3d), 0), info
    elif name == "compile":
        t0 = time.perf_counter()
        optimize_for_inference(model, compile=True, example_inputs=example)
        info["compile_s"] = time.perf_counter() - t0
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {ALL_VARIANTS}")
    if name.startswith("amp_"):
        dtype = torch.float16 if name == "amp_fp16" else torch.bfloat16

        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(dev_type, dtype=dtype):
                return model(x, 0).float()

        return model, call, info
    return model, lambda x: model(x, 0), info


def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    cfg = UniSegConfig.uniseg_11task(patch_size=args.patch, base_num_features=args.base)
    eager = UniSeg(cfg).to(device).eval()
    variants = args.variants or (CUDA_VARIANTS if torch.device(device).type == "cuda" else CPU_VARIANTS)
    ceiling_dtype = torch.float16 if torch.device(device).type == "cuda" and any(v.startswith("amp") for v in variants) else None

    record: dict[str, Any] = dict(
        benchmark="forward",
        env=env_info(device),
        args=vars(args),
        config=dict(patch_size=cfg.patch_size, base_num_features=cfg.base_num_features, stage_channels=cfg.stage_channels),
        num_parameters=sum(p.numel() for p in eager.parameters()),
        ceiling=[],
        results=[],
    )

    def ceiling() -> dict[str, Any]:
        c = conv3d_ceiling(64, args.ceiling_spatial, repeats=args.repeats, warmup=1, device=device)
        c["channels_last_3d"] = conv3d_ceiling(
            64, args.ceiling_spatial, repeats=args.repeats, warmup=1, device=device, channels_last=True
        )
        if ceiling_dtype is not None:
            c["autocast_fp16"] = conv3d_ceiling(64, args.ceiling_spatial, repeats=args.repeats, warmup=1, device=device, autocast_dtype=ceiling_dtype)
        return c

    with torch.inference_mode():
        record["ceiling"].append(ceiling())
        rows = []
        for batch in args.batch:
            x = torch.randn(batch, 1, *cfg.patch_size, device=device)
            ref = eager(x, 0)
            built = {}
            for name in variants:
                model, call, info = make_variant(name, eager, (x, 0), device)
                built[name] = (model, call, info)
            network_flops = count_flops(lambda: eager(x, 0))[0]  # compiled code cannot be counted; same network
            flops = {name: count_flops(lambda: call(x))[0] if name == "dynunet" else network_flops
                     for name, (_, call, _) in built.items()}
            for name, (_, call, _) in built.items():  # warm-up
                for _ in range(args.warmup):
                    call(x)
            times: dict[str, list[float]] = {name: [] for name in built}
            for _ in range(args.repeats):
                for name, (_, call, _) in built.items():
                    synchronize(device)
                    t0 = time.perf_counter()
                    call(x)
                    synchronize(device)
                    times[name].append(time.perf_counter() - t0)
            for name, (_, call, info) in built.items():
                diff = max_abs_diff(call(x), ref) if name != "dynunet" else None
                s = median(times[name])
                rows.append(
                    dict(
                        batch=batch,
                        variant=name,
                        median_s=s,
                        min_s=min(times[name]),
                        per_sample_s=s / batch,
                        gflops_per_s=flops[name] / s / 1e9,
                        gflop=flops[name] / 1e9,
                        runs_s=times[name],
                        max_abs_diff=diff,
                        **info,
                    )
                )
            del built, x, ref
        record["ceiling"].append(ceiling())

    top = max(c["gflops_per_s"] for c in record["ceiling"])
    best = max(top, *(c["channels_last_3d"]["gflops_per_s"] for c in record["ceiling"]))
    for row in rows:
        base = next(r for r in rows if r["batch"] == row["batch"] and r["variant"] == variants[0])
        row["speedup_vs_" + variants[0]] = base["median_s"] / row["median_s"]
        dyn = next((r for r in rows if r["batch"] == row["batch"] and r["variant"] == "dynunet"), None)
        row["speedup_vs_dynunet"] = dyn["median_s"] / row["median_s"] if dyn else None
        row["pct_of_conv3d_ceiling"] = 100.0 * row["gflops_per_s"] / top
        row["pct_of_best_layout_ceiling"] = 100.0 * row["gflops_per_s"] / best
    record["results"] = rows
    record["ceiling_gflops_per_s"] = top
    record["ceiling_best_layout_gflops_per_s"] = best
    record["env"]["loadavg_end"] = env_info(device)["loadavg"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 192, 192], metavar=("D", "H", "W"))
    parser.add_argument("--base", type=int, default=32, help="base_num_features (32 = the official network)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=None,
                        help=f"default: {CPU_VARIANTS} on CPU, {CUDA_VARIANTS} on CUDA; the first is the baseline")
    parser.add_argument("--ceiling-spatial", type=int, nargs=3, default=[64, 96, 96], metavar=("D", "H", "W"),
                        help="size of the lone 64-channel conv3d that defines the ceiling (default 64 96 96)")
    add_common_args(parser, repeats=3, warmup=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    record = run(args)
    cols = ["batch", "variant", "median_s", "min_s", "per_sample_s", f"speedup_vs_{record['results'][0]['variant']}",
            "speedup_vs_dynunet", "gflops_per_s", "pct_of_conv3d_ceiling", "pct_of_best_layout_ceiling", "max_abs_diff"]
    if any("compile_s" in r for r in record["results"]):
        cols.append("compile_s")
    ceil = ", ".join(f"{c['gflops_per_s']:.1f}" for c in record["ceiling"])
    ceil_cl = ", ".join(f"{c['channels_last_3d']['gflops_per_s']:.1f}" for c in record["ceiling"])
    print_table(
        record["results"],
        cols,
        title=f"UniSeg forward, patch {args.patch}, base {args.base}, {args.device}, threads "
        f"{record['env']['torch_threads']}, load {record['env']['loadavg']} -> {record['env']['loadavg_end']}\n"
        f"conv3d ceiling (64ch 3x3x3 {args.ceiling_spatial}) GFLOP/s before, after: contiguous {ceil}; "
        f"channels_last_3d {ceil_cl}",
    )
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
