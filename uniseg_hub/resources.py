"""What a job needs, checked before any work starts: :func:`resolve_device` turns a user's device string into a
usable ``torch.device`` (or one clear error), :func:`check_memory` refuses a job whose estimated peak exceeds the
memory limit *before* anything large is allocated, :func:`check_output_files` refuses outputs that exist (unless
asked to overwrite) or cannot be written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["MemoryEstimateError", "resolve_device", "memory_limit_bytes", "check_memory", "check_output_files"]


class MemoryEstimateError(ValueError):
    """The job needs more memory than the limit allows (a ``ValueError``: the CLI reports it in one line)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` that exists here; ``None``: CUDA when available, else the CPU.

    Raises ``ValueError`` for a string that names no device, CUDA without a CUDA device, or a device index beyond
    the devices present.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name: expected cpu, cuda or cuda:N ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA device is available here (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r}: expected cpu, cuda or cuda:N")
    return dev


def memory_limit_bytes(device: torch.device, limit_gb: float | None = None) -> int:
    """``limit_gb`` in bytes, else 90% of the GPU's memory on CUDA and 80% of physical memory on the CPU."""
    if limit_gb is not None:
        return int(limit_gb * (1 << 30))
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1] * 0.9)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.8)
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def check_memory(needed: int, what: str, device: torch.device, limit_gb: float | None, hint: str,
                 error: type[ValueError] = MemoryEstimateError) -> None:
    """Raise ``error`` naming ``what``, the estimate and the limit when ``needed`` bytes exceed the limit."""
    limit = memory_limit_bytes(device, limit_gb)
    if needed > limit:
        gib = 1 << 30
        raise error(f"{what} needs about {needed / gib:.2f} GiB on {device}, more than the limit of "
                    f"{limit / gib:.2f} GiB: {hint}")


def check_output_files(paths: list[Path] | list[str], *, overwrite: bool, flag: str = "--overwrite / overwrite=True") -> None:
    """Before any work: refuse existing ``paths`` unless ``overwrite`` (naming ``flag``), create their folders and
    prove each folder writable by creating (and removing) a file in it, so a long job never fails at the end."""
    for path in map(Path, paths):
        if path.is_dir():
            raise ValueError(f"output {str(path)!r} is a folder: expected a file path")
        if path.exists() and not overwrite:
            raise ValueError(f"output {str(path)!r} already exists: pass {flag} to replace it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".uniseg-write-check-"):
                pass
        except OSError as e:
            raise ValueError(f"cannot write output {str(path)!r}: {e.strerror or e} (folder {str(path.parent)!r})") from None
