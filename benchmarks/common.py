"""Shared helpers for the scripts in ``benchmarks/``: timing, FLOP counting, peak memory, tables and JSON.

Every benchmark measures its baseline and candidates in the same run (so machine load affects both alike),
prints a table of medians and writes a JSON record that includes :func:`env_info` (torch version, threads,
load average). Import as ``from common import ...`` when run as a script (``python benchmarks/x.py``), or as
``from benchmarks.common import ...`` from the repository root.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "time_fn",
    "median",
    "synchronize",
    "count_flops",
    "conv3d_ceiling",
    "max_abs_diff",
    "env_info",
    "print_table",
    "format_table",
    "write_json",
    "run_child",
    "peak_rss_gib",
    "add_common_args",
    "setup_threads",
]

log = logging.getLogger("benchmarks")


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued CUDA work (no-op on CPU) so wall-clock timings are honest."""
    dev = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (dev is None or dev.type == "cuda"):
        torch.cuda.synchronize(dev)


def time_fn(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: str | torch.device | None = None) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; return the wall times in seconds.

    CUDA work is synchronised before and after each timed call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` with :class:`torch.utils.flop_counter.FlopCounterMode` (2 per MAC).

    Returns ``(total, {op_name: flops})``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def conv3d_ceiling(
    channels: int = 64,
    spatial: Sequence[int] = (64, 96, 96),
    kernel: Sequence[int] = (3, 3, 3),
    repeats: int = 3,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Achieved GFLOP/s of one lone ``conv3d`` (``channels`` → ``channels``, same padding, batch 1).

    This is the practical ceiling for a conv network on this machine: the official measurements used
    64 channels, 3x3x3, 64x96x96 in the default (contiguous) layout (about 116 GFLOP/s on 2 cores then).
    ``channels_last``: input and weight in ``torch.channels_last_3d`` (oneDNN's native layout on CPU; faster).
    """
    conv = torch.nn.Conv3d(channels, channels, tuple(kernel), padding=[k // 2 for k in kernel]).to(device, dtype).eval()
    x = torch.randn(1, channels, *spatial, device=device, dtype=dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last_3d), x.contiguous(memory_format=torch.channels_last_3d)

    def run() -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, autocast_dtype):
            return conv(x)

    flops, _ = count_flops(run)
    times = time_fn(run, repeats, warmup, device)
    s = median(times)
    return dict(
        channels=channels,
        spatial=list(spatial),
        kernel=list(kernel),
        dtype=str(autocast_dtype or dtype).replace("torch.", ""),
        layout="channels_last_3d" if channels_last else "contiguous",
        flops=flops,
        s_runs=times,
        s_median=s,
        gflops_per_s=flops / s / 1e9,
    )


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _autocast(device: str | torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return _NullCtx()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference of two tensors (or equal-length lists of tensors), computed in float64."""
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise ValueError(f"cannot compare {len(a)} outputs with {len(b)}")
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


def peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB (``ru_maxrss``; KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def env_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a reader needs to compare numbers across machines, including the load average at this moment."""
    info: dict[str, Any] = dict(
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        device=str(device),
    )
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:  # pragma: no cover - monai is a dependency
        pass
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) < 1e-2 or abs(v) >= 1e5:
            return f"{v:.2e}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return "-" if v is None else str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts); columns default to the keys in first-seen order."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print :func:`format_table` to stdout (benchmark scripts are command-line programs: the table is their output)."""
    text = format_table(rows, columns)
    if title:
        text = f"{title}\n{text}"
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, torch.Size):
        return list(obj)
    return obj


def write_json(path: str | os.PathLike | None, data: Mapping[str, Any]) -> Path | None:
    """Write ``data`` as indented JSON (creating parent folders); ``None`` writes nothing."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=1) + "\n")
    log.info("wrote %s", path)
    return path


def run_child(script: str | os.PathLike, args: Iterable[str], timeout: float | None = None,
              env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``python script *args`` in a fresh process that prints one JSON object as its last stdout line
    (``env``: the child's whole environment; default this process's).

    The child's own ``ru_maxrss`` (measured by itself) is its peak memory, unaffected by the parent. Raises
    ``RuntimeError`` with the child's stderr tail if it fails.
    """
    cmd = [sys.executable, str(script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"benchmark child {' '.join(cmd)} printed no JSON result; stderr:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def add_common_args(parser, *, repeats: int = 3, warmup: int = 1) -> None:
    """``--repeats --warmup --threads --device --json`` shared by all benchmark scripts."""
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed runs per configuration (default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs first (default {warmup})")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--json", default=None, help="write the full record to this JSON file")


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))
