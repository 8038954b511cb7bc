"""Whole-volume prediction: ``uniseg_hub.inference`` against a literal port of the official nnU-Net v1 loop.

The baseline (:func:`naive_predict_3d`) follows nnU-Net v1 ``_internal_predict_3D_3Dconv_tiled`` +
``_internal_maybe_mirror_and_pred_3D`` line by line, as UniSeg's predictor runs it: ``torch.no_grad``, one window
and one mirror flip per forward of batch 1, the window's softmax averaged over flips and multiplied by the Gaussian
on the device, copied to the host, and accumulated in two ``(K, D, H, W)`` numpy buffers. The candidate is
:func:`uniseg_hub.inference.sliding_window_inference` (the path :class:`~uniseg_hub.inference.UniSegPredictor`
runs) at identical settings, plus its options (batched windows/mirrors, channels-last, ``torch.compile``, CUDA
autocast).

Every configuration runs in its own subprocess (one per configuration and repeat, interleaved round-robin so
machine load drifts hit all alike); peak memory is the child's ``ru_maxrss`` (and CUDA ``max_memory_allocated``).
Sections (``--sections``):

* ``main``: a CT-sized volume (default 83x273x273 at 3x1.5x1.5 mm, the issue's typical abdominal CT) without and
  with mirroring; median time, ratio naive/candidate, max |difference| of the probabilities, peak RSS.
* ``scaling``: time vs volume size (1x, 2x, 4x voxels), no mirroring.
* ``fast``: documented fast modes (no mirroring, step 0.75, fewer mirror axes) on a real scan (nilearn's MNI152
  T1): time and Dice of each mode's segmentation against the default mode's.

Defaults are the issue's full sizes (``uniseg_11task``, base 32, patch 64x192x192, 83x273x273; the mirrored
setting flips W only, 2 passes per window; ``--mirror-axes 0 1 2`` is the official 8). One full-size forward takes
~20 s on 2 quiet CPU cores, so the default CPU run takes well over 30 min; ``benchmarks/README.md`` gives the
reduced setting of its reported table and the command that produced it. Examples::

    python benchmarks/predict.py --sections main scaling --base 8 --patch 32 96 96 --volume 42 137 137 --json p.json
    python benchmarks/predict.py --device cuda --amp bf16 --sw-batch-size 8     # GPU machine
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, env_info, median, peak_rss_gib, print_table, run_child, setup_threads, write_json  # noqa: E402

from uniseg_hub import UniSeg, UniSegConfig  # noqa: E402
from uniseg_hub.inference import compute_steps, gaussian_importance_map, sliding_window_inference  # noqa: E402

logger = logging.getLogger("benchmarks.predict")

MNI_T1 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TINY_CHECKPOINT = ROOT / "tests" / "fixtures" / "uniseg_reference" / "tiny_upstream.model"
DEMO_WEIGHTS = ROOT / "uniseg_hub" / "registry" / "uniseg-demo"


# ---------------------------------------------------------------------------------------------------------------
# The baseline: nnU-Net v1 predict_3D, literally
# ---------------------------------------------------------------------------------------------------------------
def _official_mirror_and_pred(net, x, task_id, num_classes, mirror_axes, do_mirroring, mult, device):
    """nnU-Net v1 ``_internal_maybe_mirror_and_pred_3D`` (UniSeg passes ``task_id`` to every forward)."""
    x = torch.from_numpy(x).to(device)
    result_torch = torch.zeros([1, num_classes] + list(x.shape[2:]), dtype=torch.float, device=device)
    if do_mirroring:
        mirror_idx, num_results = 8, 2 ** len(mirror_axes)
    else:
        mirror_idx, num_results = 1, 1
    tid = torch.full((1,), task_id, dtype=torch.long, device=device) if task_id is not None else None

    def pred(inp):
        out = net(inp) if tid is None else net(inp, tid)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return torch.softmax(out.float(), 1)

    # m: flipped dims in the official order (m=1: W, 2: H, 3: W+H, 4: D, 5: W+D, 6: H+D, 7: all)
    table = [((), ()), ((4,), (2,)), ((3,), (1,)), ((4, 3), (2, 1)), ((2,), (0,)), ((4, 2), (0, 2)),
             ((3, 2), (0, 1)), ((4, 3, 2), (0, 1, 2))]
    for m in range(mirror_idx):
        dims, needs = table[m]
        if all(a in mirror_axes for a in needs):
            p = pred(torch.flip(x, dims)) if dims else pred(x)
            result_torch += 1 / num_results * (torch.flip(p, dims) if dims else p)
    if mult is not None:
        result_torch[:, :] *= mult
    return result_torch


def naive_predict_3d(
    net, data: np.ndarray, patch_size: Sequence[int], num_classes: int, task_id: int | None = 0,
    step_size: float = 0.5, mirror_axes: Sequence[int] = (0, 1, 2), device: str = "cpu",
) -> np.ndarray:
    """nnU-Net v1 ``_internal_predict_3D_3Dconv_tiled`` (Gaussian, ``all_in_gpu=False``): ``(C, D, H, W)`` numpy
    → ``(K, D, H, W)`` float32 probabilities. ``mirror_axes=()`` is ``do_mirroring=False``."""
    with torch.no_grad():
        do_mirroring = len(mirror_axes) > 0
        # pad_nd_image(data, patch_size, "constant", {"constant_values": 0}, True)
        shape = data.shape[1:]
        new_shape = [max(p, s) for p, s in zip(patch_size, shape)]
        diff = [n - s for n, s in zip(new_shape, shape)]
        pad = [[0, 0]] + [[d // 2, d - d // 2] for d in diff]
        data = np.pad(data, pad, "constant", constant_values=0)
        slicer = tuple([slice(0, data.shape[0])] + [slice(p[0], data.shape[i + 1] - p[1]) for i, p in enumerate(pad[1:])])
        data_shape = data.shape
        steps = compute_steps(data_shape[1:], patch_size, step_size)
        num_tiles = len(steps[0]) * len(steps[1]) * len(steps[2])
        if num_tiles > 1:  # v1 keeps the map on the GPU as a tensor, its numpy copy for the counts
            add_for_nb_of_preds = gaussian_importance_map_np(patch_size)
            gaussian_importance_map = torch.from_numpy(add_for_nb_of_preds).to(device)
        else:
            gaussian_importance_map = None
            add_for_nb_of_preds = np.ones(patch_size, dtype=np.float32)
        aggregated_results = np.zeros([num_classes] + list(data.shape[1:]), dtype=np.float32)
        aggregated_nb_of_predictions = np.zeros([num_classes] + list(data.shape[1:]), dtype=np.float32)
        for x in steps[0]:
            lb_x, ub_x = x, x + patch_size[0]
            for y in steps[1]:
                lb_y, ub_y = y, y + patch_size[1]
                for z in steps[2]:
                    lb_z, ub_z = z, z + patch_size[2]
                    predicted_patch = _official_mirror_and_pred(
                        net, data[None, :, lb_x:ub_x, lb_y:ub_y, lb_z:ub_z], task_id, num_classes, mirror_axes,
                        do_mirroring, gaussian_importance_map, device,
                    )[0]
                    predicted_patch = predicted_patch.cpu().numpy()
                    aggregated_results[:, lb_x:ub_x, lb_y:ub_y, lb_z:ub_z] += predicted_patch
                    aggregated_nb_of_predictions[:, lb_x:ub_x, lb_y:ub_y, lb_z:ub_z] += add_for_nb_of_preds
        slicer = tuple([slice(0, aggregated_results.shape[i]) for i in range(1)] + list(slicer[1:]))
        aggregated_results = aggregated_results[slicer]
        aggregated_nb_of_predictions = aggregated_nb_of_predictions[slicer]
        return aggregated_results / aggregated_nb_of_predictions


def gaussian_importance_map_np(patch_size: Sequence[int]) -> np.ndarray:
    """The official ``_get_gaussian`` map as numpy (built by our scipy-free port, tested against the fixture)."""
    return gaussian_importance_map(patch_size).numpy()


# ---------------------------------------------------------------------------------------------------------------
# One configuration in a child process
# ---------------------------------------------------------------------------------------------------------------
def build_model(base: int, patch: Sequence[int], seed: int = 0) -> UniSeg:
    """A ``uniseg_11task`` network with ``base`` features and He-initialised (seeded) weights."""
    torch.manual_seed(seed)
    cfg = UniSegConfig.uniseg_11task(base_num_features=base, patch_size=list(patch))
    return UniSeg(cfg).eval()


def ct_like_volume(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A smooth, CT-normalised-looking ``(1, D, H, W)`` float32 volume (content does not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, *[max(2, s // 8) for s in shape]), generator=g)
    vol = torch.nn.functional.interpolate(coarse, size=list(shape), mode="trilinear", align_corners=False)
    return vol[0].numpy().astype(np.float32)


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one whole-volume prediction of ``spec`` (after a one-window warm-up) and report peak memory."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    net = build_model(spec["base"], spec["patch"]).to(device)
    data = ct_like_volume(spec["volume"])
    mirror = tuple(spec["mirror_axes"])
    method = spec["method"]
    opts = spec.get("options", {})
    k = net.config.num_classes
    if opts.get("optimize"):
        from uniseg_hub.models.perf import optimize_for_inference

        optimize_for_inference(net)
    if opts.get("channels_last"):
        net = net.to(memory_format=torch.channels_last_3d)
    if opts.get("compile"):  # as UniSegPredictor(compile=True): one graph, inductor freezing, eager fallback
        from uniseg_hub.models.perf import try_compile

        try_compile(net, freeze=True, dynamic=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # warm-up: one window forward (compiles / creates oneDNN primitives; not part of the timing)
    warm = torch.zeros((max(1, opts.get("sw_batch_size", 1)), 1, *spec["patch"]), device=device)
    if opts.get("channels_last"):
        warm = warm.contiguous(memory_format=torch.channels_last_3d)
    t_warm = time.perf_counter()
    with torch.inference_mode(), _autocast_ctx(device, opts.get("amp")):
        net(warm, torch.zeros(warm.shape[0], dtype=torch.long, device=device))
    sync()
    t_warm = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "naive":
        probs = naive_predict_3d(net, data, spec["patch"], k, 0, spec["step"], mirror, str(device))
    else:
        out = sliding_window_inference(
            torch.from_numpy(data), spec["patch"], opts.get("sw_batch_size", 1), net, overlap=1 - spec["step"],
            task_id=0, mirror_axes=mirror, device=device, amp_dtype=opts.get("amp"),
            channels_last=bool(opts.get("channels_last")),
        )
        sync()
        probs = out.cpu().numpy()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = {"seconds": seconds, "cpu_s": cpu, "warmup_s": t_warm, "peak_rss_gib": peak_rss_gib(),
              "loadavg": list(os.getloadavg())}
    if device.type == "cuda":
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if spec.get("save"):
        np.save(spec["save"], probs.astype(np.float32))
    return result


def _autocast_ctx(device: torch.device, amp: str | None):
    from uniseg_hub.inference import _autocast

    return _autocast(device, amp)


def spawn(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run :func:`run_worker` in a fresh interpreter (its own peak memory); return its JSON result."""
    return run_child(Path(__file__).resolve(), ["--worker", json.dumps(spec)], timeout=timeout)


def _methods(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) of the baseline and every candidate requested on the command line."""
    methods: list[tuple[str, dict[str, Any]]] = [("naive", {}), ("ours", {"sw_batch_size": 1})]
    if not args.no_optimize:
        methods.append(("ours optimize", {"sw_batch_size": 1, "optimize": True}))
    if args.sw_batch_size > 1:
        opt = " optimize" if not args.no_optimize else ""
        methods.append((f"ours{opt} sw_batch={args.sw_batch_size}",
                        {"sw_batch_size": args.sw_batch_size, "optimize": not args.no_optimize}))
    if args.channels_last:
        methods.append(("ours channels_last", {"sw_batch_size": 1, "channels_last": True}))
    if args.compile:
        methods.append(("ours optimize+compile", {"sw_batch_size": 1, "optimize": True, "compile": True}))
    if args.amp:
        methods.append((f"ours optimize {args.amp} sw_batch={args.sw_batch_size}",
                        {"sw_batch_size": args.sw_batch_size, "amp": args.amp, "optimize": not args.no_optimize}))
    return methods


def compare(args, tmp: Path, title: str, settings: list[dict[str, Any]], methods: list[tuple[str, dict[str, Any]]]) -> list[dict]:
    """Run every (setting, method) ``args.repeats`` times, round-robin; one row per pair, ratio against naive."""
    jobs = []
    for si, setting in enumerate(settings):
        for mi, (name, opts) in enumerate(methods):
            jobs.append(dict(setting, method="naive" if name == "naive" else "ours", name=name, options=opts,
                             threads=args.threads or torch.get_num_threads(), device=args.device, base=args.base,
                             patch=args.patch, step=setting.get("step", args.step), key=(si, mi)))
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.repeats):
        for job in jobs:
            spec = dict(job, key=None, save=str(tmp / f"{job['key'][0]}_{job['key'][1]}.npy") if r == 0 else None)
            logger.info("%s: %s %s, repeat %d", title, job["name"], job["label"], r + 1)
            runs.setdefault(job["key"], []).append(spawn(spec))
    rows = []
    for job in jobs:
        si, mi = job["key"]
        res = runs[job["key"]]
        t = median([x["seconds"] for x in res])
        t_naive = median([x["seconds"] for x in runs[(si, 0)]])
        ref = np.load(tmp / f"{si}_0.npy")
        out = np.load(tmp / f"{si}_{mi}.npy")
        passes = math.prod(len(s) for s in compute_steps([max(v, p) for v, p in zip(job["volume"], args.patch)], args.patch, job["step"]))
        rows.append({
            "setting": job["label"], "method": job["name"], "forwards": passes * 2 ** len(job["mirror_axes"]),
            "median_s": t, "runs_s": [x["seconds"] for x in res], "ratio_vs_naive": t_naive / t,
            "cpu_s": median([x["cpu_s"] for x in res]),
            "cpu_ratio": median([x["cpu_s"] for x in runs[(si, 0)]]) / median([x["cpu_s"] for x in res]),
            "max_abs_diff": float(np.abs(out.astype(np.float64) - ref).max()),
            "peak_rss_gib": max(x["peak_rss_gib"] for x in res),
            "warmup_s": median([x["warmup_s"] for x in res]),
            **({"cuda_peak_gib": max(x["cuda_peak_gib"] for x in res)} if "cuda_peak_gib" in res[0] else {}),
            "loadavg_1m": [x["loadavg"][0] for x in res],
        })
    cols = ["setting", "method", "forwards", "median_s", "ratio_vs_naive", "cpu_s", "cpu_ratio", "max_abs_diff", "peak_rss_gib", "warmup_s"]
    print_table(rows, cols + (["cuda_peak_gib"] if "cuda_peak_gib" in rows[0] else []), title=f"\n## {title}")
    return rows


def section_main(args, tmp: Path) -> list[dict]:
    mirror = tuple(args.mirror_axes)
    settings = [dict(volume=args.volume, mirror_axes=[], label=f"{'x'.join(map(str, args.volume))} no mirroring")]
    if mirror:
        settings.append(dict(volume=args.volume, mirror_axes=list(mirror), label=f"{'x'.join(map(str, args.volume))} mirror {mirror}"))
    return compare(args, tmp, "whole-volume prediction", settings, _methods(args))


def section_scaling(args, tmp: Path) -> list[dict]:
    settings = []
    for f in args.scaling:
        vol = [max(1, round(v * f ** (1 / 3))) for v in args.volume]
        settings.append(dict(volume=vol, mirror_axes=[], label=f"{f:g}x voxels {'x'.join(map(str, vol))}"))
    methods = [m for m in _methods(args) if m[0] in ("naive", "ours optimize")] or _methods(args)[:2]
    return compare(args, tmp, "scaling (no mirroring)", settings, methods)


def _load_real_model(path: str | None):
    from uniseg_hub.models.uniseg import checkpoint_filter_fn

    if path is None:
        path = str(DEMO_WEIGHTS) if DEMO_WEIGHTS.is_dir() else str(TINY_CHECKPOINT)
    if path.endswith(".model"):
        from uniseg_hub.weights import load_nnunet_v1_checkpoint

        state, cfg, _ = load_nnunet_v1_checkpoint(path)
        if cfg is None:  # the tiny fixture has no plans: its config is in tiny_config.json
            j = json.loads((Path(path).parent / "tiny_config.json").read_text())
            cfg = UniSegConfig.uniseg_11task(
                patch_size=j["patch_size"], base_num_features=j["base_num_features"],
                max_num_features=j["max_num_features"], pool_op_kernel_sizes=j["pool_op_kernel_sizes"],
                conv_kernel_sizes=j["conv_kernel_sizes"], conv_per_stage=j["conv_per_stage"],
                input_channels=j["input_channel_variants"], num_classes=j["num_classes"], num_tasks=j["num_tasks"],
            )
        model = UniSeg(cfg)
        model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
        return model.eval(), path
    from uniseg_hub.hub import from_pretrained

    return from_pretrained(path).eval(), path


def dice(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> float:
    """Mean Dice over ``labels`` (a label absent from both counts as 1)."""
    scores = []
    for lab in labels:
        x, y = a == lab, b == lab
        s = x.sum() + y.sum()
        scores.append(1.0 if s == 0 else 2.0 * np.logical_and(x, y).sum() / s)
    return float(np.mean(scores)) if scores else 1.0


def section_fast(args) -> list[dict]:
    """Fast modes on a real scan: time and Dice against the default (8-fold mirroring, step 0.5)."""
    import warnings

    from uniseg_hub.inference import UniSegPredictor
    from uniseg_hub.preprocessing import load_image

    setup_threads(args.threads)
    model, source = _load_real_model(args.fast_weights)
    scan = args.scan or str(Path(np.__file__).resolve().parent.parent / MNI_T1)
    cfg = model.config
    task = args.fast_task if args.fast_task is not None else 0
    image = load_image([scan])
    modes = [("default: mirror (0, 1, 2), step 0.5", dict(mirror=True, overlap=0.5)),
             ("mirror (1, 2)", dict(mirror=True, mirror_axes=(1, 2), overlap=0.5)),
             ("mirror (2,)", dict(mirror=True, mirror_axes=(2,), overlap=0.5)),
             ("step 0.75, mirror (0, 1, 2)", dict(mirror=True, overlap=0.25)),
             ("no mirroring", dict(mirror=False, overlap=0.5)),
             ("no mirroring, step 0.75", dict(mirror=False, overlap=0.25))]
    rows, ref = [], None
    k = cfg.tasks[cfg.task_index(task)].num_classes if cfg.tasks else cfg.num_classes
    for name, kw in modes:
        pred = UniSegPredictor(model, device=args.device, sw_batch_size=args.sw_batch_size, **kw)
        times, labels = [], None
        for _ in range(args.fast_repeats):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                labels = pred.predict(image, task=task).labels
                times.append(time.perf_counter() - t0)
        if ref is None:
            ref = labels
        fg = [int(v) for v in range(1, k)]
        rows.append({"mode": name, "median_s": median(times), "speedup_vs_default": None,
                     "dice_vs_default": dice(labels, ref, fg),
                     "changed_voxels": float((labels != ref).mean()),
                     "foreground_fraction": float((labels > 0).mean())})
    for r in rows:
        r["speedup_vs_default"] = rows[0]["median_s"] / r["median_s"]
    print_table(rows, title=f"\n## fast modes on {Path(scan).name} ({Path(source).name}, task {task!r}, "
                f"{'x'.join(map(str, image.array.shape[1:]))} voxels)")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--sections", nargs="+", default=["main", "scaling", "fast"], choices=["main", "scaling", "fast"])
    p.add_argument("--volume", type=int, nargs=3, default=[83, 273, 273], help="(D H W) of the synthetic CT volume")
    p.add_argument("--patch", type=int, nargs=3, default=[64, 192, 192], help="window = patch size (default uniseg_11task)")
    p.add_argument("--base", type=int, default=32, help="base_num_features (32 = the published network)")
    p.add_argument("--mirror-axes", type=int, nargs="*", default=[2],
                   help="axes of the mirrored setting (default W only: 2 passes per window; (0 1 2) = 8 passes)")
    p.add_argument("--step", type=float, default=0.5, help="window step as a fraction of the patch (official 0.5)")
    p.add_argument("--sw-batch-size", type=int, default=2, help="windows x flips per forward for the batched candidate (1: no batched row)")
    p.add_argument("--no-optimize", action="store_true", help="skip the uniseg_hub.models.perf.optimize_for_inference row")
    p.add_argument("--channels-last", action="store_true", help="also time channels-last 3D")
    p.add_argument("--compile", action="store_true",
                   help="also time optimize + torch.compile (compile time excluded from the time, reported as warmup_s)")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="also time CUDA autocast at --sw-batch-size")
    p.add_argument("--scaling", type=float, nargs="+", default=[1, 2, 4], help="voxel-count factors of --volume")
    p.add_argument("--scan", help="real scan for the fast-mode table (default nilearn's MNI152 T1)")
    p.add_argument("--fast-weights", help="weights for the fast-mode table (default uniseg_hub/registry/uniseg-demo, else the tiny fixture)")
    p.add_argument("--fast-task", help="task of the fast-mode table (default 0)")
    p.add_argument("--fast-repeats", type=int, default=1)
    add_common_args(p, repeats=1, warmup=0)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    setup_threads(args.threads)
    record: dict[str, Any] = {"benchmark": "predict", "args": vars(args), "env_start": env_info(args.device)}
    with tempfile.TemporaryDirectory(prefix="uniseg_predict_bench_") as tmp:
        if "main" in args.sections:
            record["main"] = section_main(args, Path(tmp))
        if "scaling" in args.sections:
            record["scaling"] = section_scaling(args, Path(tmp))
    if "fast" in args.sections:
        record["fast_modes"] = section_fast(args)
    record["env_end"] = env_info(args.device)
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
