"""Whole-volume prediction: ``uniseg_hub.inference`` against nnU-Net v2's own ``nnUNetPredictor``, same network.

The network is a UniSeg backbone (``UniSegConfig.btcv()`` topology, one CT stem, 14 classes, random weights from a
fixed seed). nnU-Net v2 gets the same weights through :func:`uniseg_hub.interop.to_nnunetv2`: a trained-model folder
(plans, ``dataset.json``, ``fold_0/checkpoint_final.pth``) that stock nnunetv2 loads with
``nnUNetPredictor.initialize_from_trained_model_folder`` into its own ``PlainConvUNet`` (checked at export to
reproduce our logits). Both predictors get the same preprocessed float32 ``(1, D, H, W)`` array; nnU-Net v2 runs
``predict_sliding_window_return_logits(tensor)`` directly (no file I/O, no preprocessing or export), ours
:meth:`uniseg_hub.inference.UniSegPredictor.predict_preprocessed` (:func:`~uniseg_hub.inference.sliding_window_inference`).

Common settings: step 0.5 (``overlap=0.5``), Gaussian weighting, one window (one flip) per forward
(``sw_batch_size=1``; nnU-Net v2 always runs batch 1), fp32 network, CPU, the same ``torch.set_num_threads``,
nnU-Net v2 with ``perform_everything_on_device=False`` (its constructor forces that on CPU anyway). Mirroring
(``--mirror``): none, and W only: our ``mirror_axes=(2,)`` flips dim 4 of the ``(B, C, D, H, W)`` window, and
nnU-Net v2's ``allowed_mirroring_axes=(2,)`` flips ``2 + 2`` = the same dim (both count spatial axes from 0 = D).

What each predictor computes (read in nnunetv2 2.8.1, ``inference/predict_from_raw_data.py`` and
``sliding_window_prediction.py``), so that the agreement columns are read correctly:

* **nnU-Net v2** averages **logits**: per window it sums the network's logits over the flips and divides by their
  number, multiplies by a Gaussian (``compute_gaussian``: sigma = patch/8, max scaled to 10, stored as
  **float16**), and adds into a ``(K, D, H, W)`` **float16** logit buffer and a float16 weight buffer (``torch.half``
  on the CPU too), divided at the end; the output is float16 logits. A producer thread copies each window out of
  the volume (outside inference mode) while the network runs.
* **uniseg** (UniSeg / nnU-Net v1 semantics) averages **softmax probabilities** in float32: per window the softmax
  of each flip, averaged, times the Gaussian (sigma = patch/8, max 1, float32), added into float32 buffers.

So the two outputs differ by design, not only by rounding: where windows overlap, the mean of probabilities is not
the softmax of the mean of logits. float16 adds ~1e-3 relative rounding to nnU-Net v2's logits, and more near the
volume's faces and corners, which only window edges cover: there its float16 weight sum (``10 * W``, ``W`` our
max-1 Gaussian sum) falls below float16's smallest normal number and its averages lose most digits. The agreement
columns compare each variant with the ``nnunetv2`` row: ``max_abs_diff`` of the probabilities (nnU-Net v2's as
``softmax(float32(logits))``), ``argmax_agree_pct`` (% voxels with the same argmax) and ``argmax_agree_fp16_pct``
(the same on the voxels where nnU-Net v2's weight sum is a normal float16 number; :func:`fp16_resolved_mask`).
``tests/test_interop_nnunetv2.py`` measured 99.71 % (probability averaging) and 99.99 % (logit averaging) on a real
scan with trained weights; random weights make windows and flips disagree far more, so the design difference shows
much more here. The check that both sides compute the same thing otherwise (network, windows, Gaussian, flips and
their axis): in the first repeat the ``uniseg_default`` child also runs our sliding window with logit averaging
(``apply_softmax=False``; untimed, after its peak memory is read) and its agreement is printed and kept
(``logit_avg_*`` keys). The networks differ slightly in cost: nnU-Net v2's ``PlainConvUNet`` uses the encoder
kernel in the decoder, so the export widens UniSeg's 1x3x3 stage-0 kernels to 3x3x3 with zero taps (same outputs,
more multiply-adds); ``gflop_per_window`` gives each network's cost per forward, so predictor overhead and network
cost can be told apart.

Rows (``--variants``), each in its own child process (peak memory = the child's own, :func:`own_peak_rss_gib`), repeats
interleaved (every repeat runs every variant once):

* ``nnunetv2``: stock ``nnUNetPredictor`` (the baseline; ``ratio`` = its min time / the row's min time).
* ``nnunetv2_thp``: stock ``nnUNetPredictor`` with ``THP_MEM_ALLOC_ENABLE=1`` in its environment: the huge pages
  ``import uniseg_hub`` turns on by default (:mod:`uniseg_hub._hugepages`), given to nnU-Net v2 too, so the gain of
  that switch and the rest of ours can be told apart. Every other child starts with the variable *unset* (what a
  user's shell has), whatever the parent's environment says; each row records ``huge_pages`` (whether large tensors
  got huge pages in that child, measured after the timed call).
* ``nnunetv2_compile``: the same with ``nnUNet_compile=1`` (nnunetv2 wraps the network in ``torch.compile``; its
  fastest CPU setting).
* ``uniseg_default``: ``UniSegPredictor`` with no speed arguments (whatever ``optimize``/``compile`` default to at
  run time; the record keeps the defaults seen and, per row, the path the predictor took: ``predictor_settings``).
  A ``compile="auto"`` default decides on the real volume before the warm-up, so a compile it chooses is warmed
  up and reported as for the compiled rows.
* ``uniseg_optimize``: ``UniSegPredictor(optimize=True, compile=False)``
  (:func:`uniseg_hub.models.perf.optimize_for_inference`, never compiled).
* ``uniseg_compile``: ``UniSegPredictor(optimize=True, compile=True)`` (one graph, inductor freezing).

Warm-up (excluded from the time): one call of the same whole-volume function on a patch-sized random volume made
inside ``torch.inference_mode()`` (one window and its flips; this compiles the compiled rows); the compiled rows make
a second such call and report ``compile_s`` = first - second, a cold compile: each compiled child gets an empty
inductor cache (``TORCHINDUCTOR_CACHE_DIR``) unless ``--shared-inductor-cache``. ``graphs_timed`` counts graphs
dynamo compiled during the timed call (0 unless something recompiled).

Sizes (``--size``): ``smoke`` (seconds; tests), ``reduced`` (48x120x120 volume, 32x96x96 patch, base 8: 8 windows)
and ``full`` (83x273x273, the BTCV-like CT of ``benchmarks/predict.py``, at the downstream 64x192x192 patch with the
full base-32 network: 8 windows); ``--volume``, ``--patch`` and ``--base`` override. Examples::

    python benchmarks/predict_vs_nnunetv2.py --size smoke --repeats 1 --json /tmp/smoke.json
    python benchmarks/predict_vs_nnunetv2.py --size reduced --repeats 5 --threads 2 --json benchmarks/results/predict_vs_nnunetv2_reduced_cpu.json
    python benchmarks/predict_vs_nnunetv2.py --size full --repeats 2 --threads 2 --json benchmarks/results/predict_vs_nnunetv2_full_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import inspect
import itertools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import env_info, median, peak_rss_gib, print_table, run_child, write_json

logger = logging.getLogger("benchmarks.predict_vs_nnunetv2")

VARIANTS = ["nnunetv2", "nnunetv2_thp", "nnunetv2_compile", "uniseg_default", "uniseg_optimize", "uniseg_compile"]
#: PyTorch's switch for huge pages in its CPU allocator (read at its first allocation); ``import uniseg_hub`` sets it
#: by default (:mod:`uniseg_hub._hugepages`), stock nnU-Net v2 does not
THP_ENV = "THP_MEM_ALLOC_ENABLE"
UNISEG_OPTIONS: dict[str, dict[str, bool]] = {
    "uniseg_default": {},  # no speed arguments: follows UniSegPredictor's defaults
    "uniseg_optimize": {"optimize": True, "compile": False},
    "uniseg_compile": {"optimize": True, "compile": True},
}
#: (volume, patch, base_num_features) per ``--size``; reduced and full: 2x2x2 = 8 windows at step 0.5
SIZES: dict[str, dict[str, Any]] = {
    "smoke": dict(volume=[32, 80, 80], patch=[32, 64, 64], base=4),  # 1x2x2 = 4 windows
    "reduced": dict(volume=[48, 120, 120], patch=[32, 96, 96], base=8),
    "full": dict(volume=[83, 273, 273], patch=[64, 192, 192], base=32),
}
MIRRORS = {"none": [[]], "w": [[2]], "both": [[], [2]]}
NUM_CLASSES = 14  # BTCV: 13 organs + background
DATASET = "Dataset060_BTCV"


# ---------------------------------------------------------------------------------------------------------------
# The shared inputs: network weights, the nnU-Net v2 model folder, the volume
# ---------------------------------------------------------------------------------------------------------------
def btcv_config(patch: Sequence[int], base: int):
    """``UniSegConfig.btcv()`` topology with one CT stem, ``base`` features and ``patch``."""
    from uniseg_hub import UniSegConfig

    return UniSegConfig.btcv(base_num_features=int(base), patch_size=[int(p) for p in patch], input_channels=[1])


def build_backbone(patch: Sequence[int], base: int, seed: int = 0):
    """The benchmark network: a ``UniSegBackbone`` with seeded (He-initialised) random weights, eval mode."""
    from uniseg_hub import UniSegBackbone

    torch.manual_seed(seed)
    return UniSegBackbone(btcv_config(patch, base)).eval()


def ct_like_volume(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A smooth, CT-normalised-looking ``(1, D, H, W)`` float32 volume (as ``benchmarks/predict.py``; content does not
    change the cost)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, *[max(2, s // 8) for s in shape]), generator=g)
    vol = torch.nn.functional.interpolate(coarse, size=list(shape), mode="trilinear", align_corners=False)
    return vol[0].numpy().astype(np.float32)


def window_gflop(module: torch.nn.Module, patch: Sequence[int]) -> float:
    """GFLOP of one ``(1, 1, *patch)`` forward (2 per MAC), counted on the meta device (nothing runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(module).to("meta")
    fn = getattr(net, "forward_unchecked", net)  # our forward's input checks read values; the graph does not
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(torch.zeros(1, 1, *patch, device="meta"))
    return counter.get_total_flops() / 1e9


def prepare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Write the weights, the nnU-Net v2 folder and the volume into ``tmp``; return what the record keeps."""
    from uniseg_hub.interop import to_nnunetv2, to_plain_conv_unet

    model = build_backbone(args.patch, args.base, args.seed)
    torch.save(model.state_dict(), tmp / "uniseg_state.pt")
    export = to_nnunetv2(model, tmp / "nnunetv2_model", dataset_name=DATASET, modalities=["CT"])  # checks the logits
    np.save(tmp / "volume.npy", ct_like_volume(args.volume, args.seed))
    return {
        "config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "to_nnunetv2_max_abs_diff": export.max_abs_diff,
        "widened_kernel_stages": export.widened_kernels,
        "gflop_per_window": {"uniseg": window_gflop(model, args.patch),
                             "nnunetv2": window_gflop(to_plain_conv_unet(model, 1, NUM_CLASSES), args.patch)},
    }


# ---------------------------------------------------------------------------------------------------------------
# One variant in a child process
# ---------------------------------------------------------------------------------------------------------------
def _nnunetv2_fn(spec: dict[str, Any]) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """Stock nnU-Net v2 predictor on the exported folder; ``fn(volume)`` → float16 logits ``(K, D, H, W)``."""
    os.environ["nnUNet_compile"] = "1" if spec["variant"] == "nnunetv2_compile" else "0"  # read at initialisation
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    axes = tuple(spec["mirror_axes"])
    p = nnUNetPredictor(tile_step_size=spec["step"], use_gaussian=True, use_mirroring=bool(axes),
                        perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                        allow_tqdm=False)
    p.initialize_from_trained_model_folder(spec["model_folder"], use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    p.allowed_mirroring_axes = axes if axes else None  # the checkpoint's (0, 1, 2) → this setting's axes
    settings = {"tile_step_size": p.tile_step_size, "use_gaussian": p.use_gaussian, "use_mirroring": p.use_mirroring,
                "allowed_mirroring_axes": list(axes), "perform_everything_on_device": p.perform_everything_on_device,
                "torch_compile": isinstance(p.network, torch._dynamo.eval_frame.OptimizedModule)}
    return p.predict_sliding_window_return_logits, settings


def _uniseg_fn(spec: dict[str, Any]) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], Any]:
    """Our predictor (``UniSegPredictor`` + the variant's speed arguments): ``fn(volume)`` → float32 probabilities,
    ``logits_fn(volume)`` → the same sliding window with logit averaging (``apply_softmax=False``; the check), and the
    predictor."""
    from uniseg_hub import UniSegBackbone
    from uniseg_hub.inference import UniSegPredictor, sliding_window_inference

    model = UniSegBackbone(btcv_config(spec["patch"], spec["base"]))
    model.load_state_dict(torch.load(spec["state"], weights_only=True), strict=True)
    axes = tuple(spec["mirror_axes"])
    pred = UniSegPredictor(model.eval(), device="cpu", sw_batch_size=1, overlap=1.0 - spec["step"], mirror=bool(axes),
                           mirror_axes=axes if axes else None, **UNISEG_OPTIONS[spec["variant"]])

    def logits_fn(vol: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(vol, pred.config.patch_size, 1, pred.model, overlap=pred.overlap,
                                        mirror_axes=axes, apply_softmax=False, device="cpu")

    return (lambda vol: pred.predict_preprocessed(vol, None)), logits_fn, pred


def _uniseg_settings(pred: Any) -> dict[str, Any]:
    """What the predictor resolved its arguments to (after the warm-up: ``compile="auto"`` has decided by then)."""
    out = {"sw_batch_size": pred.sw_batch_size, "overlap": pred.overlap, "mirror": pred.mirror,
           "mirror_axes": list(pred.mirror_axes) if pred.mirror else [], "amp": pred.amp,
           "channels_last": pred.channels_last, "compiled": _is_compiled(pred.model)}
    for name in ("optimize", "compile", "path"):  # newer predictors say which speed path they took
        if hasattr(pred, name):
            out[name] = getattr(pred, name)
    return out


def _is_compiled(model: torch.nn.Module) -> bool:
    from uniseg_hub.models.perf import CompiledForward

    fwd = model.__dict__.get("forward_unchecked")  # where try_compile installs the compiled forward
    return isinstance(fwd, CompiledForward) and fwd.compiled is not None


def _decide_auto_compile(pred: Any, volume: torch.Tensor) -> None:
    """``UniSegPredictor(compile="auto")`` decides at its first volume; the warm-up volume is one window, so let the
    real volume decide first (then a compile, if chosen, happens in the warm-up and not in the timed call)."""
    decide = getattr(pred, "_maybe_auto_compile", None)
    if getattr(pred, "compile", None) == "auto" and callable(decide):
        decide(volume.shape[1:])


def _dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - private API; the count is diagnostic only
        return -1


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then time one whole-volume prediction of ``spec``; save the output when ``spec['save']``."""
    torch.set_num_threads(spec["threads"])
    if spec.get("inductor_cache"):  # read by inductor when it first compiles
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = spec["inductor_cache"]
    variant = spec["variant"]
    logits_fn = pred = None
    volume = torch.from_numpy(np.load(spec["volume_file"]))  # a preprocessed array, as a user passes it
    if variant.startswith("nnunetv2"):
        fn, settings = _nnunetv2_fn(spec)
        compiled = settings["torch_compile"]
    else:
        fn, logits_fn, pred = _uniseg_fn(spec)
        _decide_auto_compile(pred, volume)
        compiled = _is_compiled(pred.model)
    setup_rss = own_peak_rss_gib()
    warm = []
    with torch.inference_mode():  # warm-up tensors made in inference mode, as the real windows are
        w = torch.randn((volume.shape[0], *spec["patch"]), generator=torch.Generator().manual_seed(1))
        for _ in range(2 if compiled else 1):
            t0 = time.perf_counter()
            fn(w)
            warm.append(time.perf_counter() - t0)
    if pred is not None:
        settings = _uniseg_settings(pred)
    graphs = _dynamo_graphs()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(volume)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = {"seconds": seconds, "cpu_s": cpu, "warmup_s": warm[0],
              "compile_s": warm[0] - warm[1] if compiled else None,
              "graphs_timed": _dynamo_graphs() - graphs if graphs >= 0 else None,
              "peak_rss_gib": own_peak_rss_gib(), "setup_rss_gib": setup_rss, "loadavg": list(os.getloadavg()),
              "torch_threads": torch.get_num_threads(), "output_dtype": str(out.dtype).replace("torch.", ""),
              "predictor_settings": settings}
    from uniseg_hub._hugepages import huge_pages_active  # after the timed call: importing uniseg_hub sets THP_ENV

    result["huge_pages"] = huge_pages_active()
    if spec.get("save"):
        np.save(spec["save"], out.numpy())
    if spec.get("save_logits") and logits_fn is not None:  # after the peak was read: not part of the row's numbers
        np.save(spec["save_logits"], logits_fn(volume).numpy())
    return result


def own_peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB: ``VmHWM`` of ``/proc/self/status`` where it exists.

    Not ``ru_maxrss`` (:func:`common.peak_rss_gib`): Linux carries it over ``fork`` and ``exec``, so a child reports at
    least the RSS its parent had when it was started (here the parent holds torch, nnunetv2, uniseg_hub and, between
    children, the outputs it compares: over 1 GiB). ``VmHWM`` belongs to the child's own address space.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_gib()


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one row in a fresh process: huge pages unset (a user's shell), set for ``nnunetv2_thp``."""
    env = {k: v for k, v in os.environ.items() if k != THP_ENV}
    if spec["variant"] == "nnunetv2_thp":
        env[THP_ENV] = "1"
    return run_child(Path(__file__).resolve(), ["--worker", json.dumps(spec)], env=env)


# ---------------------------------------------------------------------------------------------------------------
# Agreement with the nnunetv2 row
# ---------------------------------------------------------------------------------------------------------------
#: nnU-Net v2 keeps its weight sum in float16 with the Gaussian's maximum scaled to 10: where ``10 * W`` (``W``: our
#: summed Gaussian, max 1 per window) is below float16's smallest normal number, its weights and weighted logits are
#: subnormal and its averages lose most digits (near the volume's faces and corners, covered only by window edges)
FP16_TINY = 2.0**-14


def fp16_resolved_mask(volume: Sequence[int], patch: Sequence[int], step: float) -> np.ndarray:
    """``(D, H, W)`` bool: voxels whose float16 weight sum in nnU-Net v2 is a normal number (see :data:`FP16_TINY`)."""
    from uniseg_hub.inference import compute_steps, gaussian_importance_map

    padded = [max(v, p) for v, p in zip(volume, patch)]
    g = gaussian_importance_map(patch)
    weights = torch.zeros(padded)
    for start in itertools.product(*compute_steps(padded, patch, step)):
        weights[tuple(slice(a, a + p) for a, p in zip(start, patch))] += g
    lo = [(q - v) // 2 for q, v in zip(padded, volume)]
    weights = weights[tuple(slice(a, a + v) for a, v in zip(lo, volume))]
    return (10.0 * weights >= FP16_TINY).numpy()


def agreement(ref_file: Path, out_file: Path, out_is_logits: bool, resolved: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Against nnU-Net v2's logits: max abs difference of the probabilities (``softmax`` of logits), % voxels with the
    same argmax, both also on the ``resolved`` voxels only (``_fp16`` keys)."""
    ref, out = np.load(ref_file), np.load(out_file)
    if ref.shape != out.shape:
        raise RuntimeError(f"output shapes differ: nnunetv2 {ref.shape}, variant {out.shape}")
    same = ref.argmax(0) == out.argmax(0)
    p_ref = torch.softmax(torch.from_numpy(ref).float(), dim=0)
    p_out = torch.softmax(torch.from_numpy(out).float(), dim=0) if out_is_logits else torch.from_numpy(out).float()
    diff = (p_ref - p_out).abs().amax(0).numpy()
    return {f"{prefix}max_abs_diff": float(diff.max()), f"{prefix}argmax_agree_pct": float(same.mean()) * 100.0,
            f"{prefix}max_abs_diff_fp16": float(diff[resolved].max()) if resolved.any() else None,
            f"{prefix}argmax_agree_fp16_pct": float(same[resolved].mean()) * 100.0 if resolved.any() else None}


def compare(args: argparse.Namespace, tmp: Path, mirror_axes: list[int]) -> list[dict[str, Any]]:
    """Every variant ``args.repeats`` times, interleaved; one row per variant."""
    from uniseg_hub.inference import compute_steps

    label = "no mirroring" if not mirror_axes else f"mirror {tuple(mirror_axes)}"
    windows = math.prod(len(s) for s in compute_steps([max(v, p) for v, p in zip(args.volume, args.patch)], args.patch, args.step))
    base = dict(patch=args.patch, base=args.base, step=args.step, mirror_axes=mirror_axes, threads=args.threads,
                state=str(tmp / "uniseg_state.pt"), model_folder=str(tmp / "nnunetv2_model"),
                volume_file=str(tmp / "volume.npy"))
    has_ref = "nnunetv2" in args.variants
    resolved = fp16_resolved_mask(args.volume, args.patch, args.step) if has_ref else None
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    agree: dict[str, dict[str, float]] = {}
    ref_file = tmp / "out_nnunetv2.npy"
    order = sorted(args.variants, key=lambda v: v != "nnunetv2")  # the reference output first
    for r in range(args.repeats):
        for v in order:
            job = dict(base, variant=v, save=None, save_logits=None, inductor_cache=None)
            if v.endswith("_compile") and not args.shared_inductor_cache:  # a cold compile, whatever ran before
                job["inductor_cache"] = str(tmp / f"inductor_{v}_{'_'.join(map(str, mirror_axes)) or 'none'}_{r}")
            if r == 0 and has_ref:  # outputs of the first repeat, compared with nnunetv2's and deleted at once
                job["save"] = str(tmp / f"out_{v}.npy")
                if v == "uniseg_default" and not args.no_logit_check:
                    job["save_logits"] = str(tmp / f"logits_{v}.npy")
            logger.info("%s: %s, repeat %d/%d", label, v, r + 1, args.repeats)
            runs[v].append(spawn(job))
            if job["inductor_cache"]:
                shutil.rmtree(job["inductor_cache"], ignore_errors=True)
            if job["save"]:
                agree[v] = agreement(ref_file, Path(job["save"]), v.startswith("nnunetv2"), resolved)
                if v != "nnunetv2":
                    Path(job["save"]).unlink()
            if job["save_logits"]:
                agree[v].update(agreement(ref_file, Path(job["save_logits"]), True, resolved, prefix="logit_avg_"))
                Path(job["save_logits"]).unlink()
    ref_min = min(x["seconds"] for x in runs["nnunetv2"]) if has_ref else None
    rows = []
    for v in args.variants:
        res = runs[v]
        t_min = min(x["seconds"] for x in res)
        rows.append({
            "setting": label, "variant": v, "windows": windows, "forwards": windows * 2 ** len(mirror_axes),
            "min_s": t_min, "median_s": median([x["seconds"] for x in res]),
            "ratio": ref_min / t_min if ref_min else None,
            "cpu_s": median([x["cpu_s"] for x in res]),
            "peak_rss_gib": max(x["peak_rss_gib"] for x in res),
            "setup_rss_gib": max(x["setup_rss_gib"] for x in res),
            "warmup_s": median([x["warmup_s"] for x in res]),
            "compile_s": median([x["compile_s"] for x in res]) if res[0]["compile_s"] is not None else None,
            "graphs_timed": max((x["graphs_timed"] or 0) for x in res),
            "max_abs_diff": None, "argmax_agree_pct": None, "max_abs_diff_fp16": None, "argmax_agree_fp16_pct": None,
            **agree.get(v, {}),
            "runs_s": [x["seconds"] for x in res], "cpu_runs_s": [x["cpu_s"] for x in res],
            "loadavg_1m": [x["loadavg"][0] for x in res],
            "output_dtype": res[0]["output_dtype"], "predictor_settings": res[0]["predictor_settings"],
            "huge_pages": all(x.get("huge_pages") for x in res),
        })
    if ref_file.exists():
        ref_file.unlink()
    cols = ["setting", "variant", "huge_pages", "forwards", "min_s", "median_s", "ratio", "cpu_s", "peak_rss_gib", "warmup_s",
            "compile_s", "max_abs_diff", "argmax_agree_pct", "argmax_agree_fp16_pct"]
    print_table(rows, cols, title=f"\n## {label}: {'x'.join(map(str, args.volume))} volume, {'x'.join(map(str, args.patch))} "
                f"patch, base {args.base}, {windows} windows, {args.threads} threads")
    sys.stdout.write("\n" + markdown_table(rows, cols) + "\n")
    if resolved is not None:
        sys.stdout.write(f"fp16-resolved voxels (nnU-Net v2's float16 weight sum normal): {resolved.mean():.1%}\n")
    for row in rows:
        if "logit_avg_argmax_agree_pct" in row:
            sys.stdout.write(
                f"check, {row['variant']} with logit averaging (apply_softmax=False) vs nnunetv2: argmax agree "
                f"{row['logit_avg_argmax_agree_pct']:.3f} % (fp16-resolved voxels {row['logit_avg_argmax_agree_fp16_pct']:.3f} %), "
                f"max abs prob diff {row['logit_avg_max_abs_diff']:.3g} (fp16-resolved {row['logit_avg_max_abs_diff_fp16']:.3g})\n")
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """The rows as a markdown table (numbers formatted as in :func:`common.format_table`), for ``benchmarks/README.md``."""
    from common import _fmt

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _predictor_defaults() -> dict[str, Any]:
    from uniseg_hub.inference import UniSegPredictor

    sig = inspect.signature(UniSegPredictor.__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and isinstance(p.default, (bool, int, float, str, type(None)))}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--size", choices=sorted(SIZES), default="reduced",
                   help="smoke: seconds (tests); reduced: 48x120x120, patch 32x96x96, base 8; full: 83x273x273, "
                        "patch 64x192x192, base 32 (default reduced)")
    p.add_argument("--volume", type=int, nargs=3, help="(D H W) of the volume (overrides --size)")
    p.add_argument("--patch", type=int, nargs=3, help="window = patch size (overrides --size)")
    p.add_argument("--base", type=int, help="base_num_features (overrides --size)")
    p.add_argument("--mirror", choices=sorted(MIRRORS), default="both",
                   help="none, w (mirror axis 2 = W: 2 forwards per window) or both settings (default both)")
    p.add_argument("--step", type=float, default=0.5, help="window step as a fraction of the patch (default 0.5)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS, metavar="VARIANT",
                   help=f"rows to run, from {VARIANTS} (default all; agreement and ratio need nnunetv2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant, interleaved (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every child (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the volume")
    p.add_argument("--shared-inductor-cache", action="store_true",
                   help="let the compiled rows use inductor's default on-disk cache (warm after the first compile); "
                        "default: an empty cache per child, so compile_s is a cold compile")
    p.add_argument("--no-logit-check", action="store_true",
                   help="skip the untimed logit-averaging pass of uniseg_default (first repeat; see the module docstring)")
    p.add_argument("--json", default=None, help="write the full record to this JSON file")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    size = SIZES[args.size]
    args.volume = args.volume or size["volume"]
    args.patch = args.patch or size["patch"]
    args.base = args.base or size["base"]
    args.threads = args.threads or torch.get_num_threads()
    args.variants = list(dict.fromkeys(args.variants))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from importlib.metadata import version

    import nnunetv2  # noqa: F401 - fail early with a clear ImportError (the interop extra)

    record: dict[str, Any] = {"benchmark": "predict_vs_nnunetv2", "args": vars(args), "env_start": env_info("cpu"),
                              "nnunetv2": version("nnunetv2"), "uniseg_predictor_defaults": _predictor_defaults(),
                              "env_vars": {k: v for k, v in os.environ.items()
                                           if k.startswith(("OMP_", "KMP_", "MKL_", "TORCHINDUCTOR_", "nnUNet_"))}}
    with tempfile.TemporaryDirectory(prefix="uniseg_vs_nnunetv2_") as tmp:
        record["network"] = prepare(args, Path(tmp))
        g = record["network"]["gflop_per_window"]
        sys.stdout.write(f"network: UniSegConfig.btcv base {args.base}, patch {'x'.join(map(str, args.patch))}; "
                         f"GFLOP per window: uniseg {g['uniseg']:.1f}, nnunetv2 PlainConvUNet {g['nnunetv2']:.1f}; "
                         f"to_nnunetv2 max abs logit diff {record['network']['to_nnunetv2_max_abs_diff']:.2g}\n")
        record["results"] = [row for axes in MIRRORS[args.mirror] for row in compare(args, Path(tmp), axes)]
    record["env_end"] = env_info("cpu")
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
