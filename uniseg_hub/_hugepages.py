"""Transparent huge pages for PyTorch's CPU allocator: on by default, output-identical, faster on the CPU.

A UniSeg forward at the full 64x192x192 patch allocates and frees ~3 GiB of activations per window; with 4 KiB
pages every fresh buffer is faulted in page by page. PyTorch's own switch ``THP_MEM_ALLOC_ENABLE=1`` makes its CPU
allocator ``madvise(MADV_HUGEPAGE)`` every allocation of 2 MiB and more, so it is faulted in 2 MiB at a time: on
the 2-core AMD EPYC benchmark machine the optimized forward took 10.98 s instead of 12.72 s
(``benchmarks/forward.py``), and stock nnU-Net v2's whole-volume prediction 89.9 s instead of 114.2 s
(``benchmarks/predict_vs_nnunetv2.py``, row ``nnunetv2_thp``), at +0.06 GiB peak RSS (``benchmarks/README.md``).

PyTorch reads the variable once, at its first CPU allocation, so ``import uniseg_hub`` sets it (``setdefault``)
before anything imports torch. It has no effect when torch already allocated a tensor before ``uniseg_hub`` was
imported, on non-Linux systems, or when the kernel's THP mode is ``never``. Opt out with ``THP_MEM_ALLOC_ENABLE=0``
in the environment (an existing value is never changed). :func:`huge_pages_active` tells whether it took effect
(``UniSegPredictor.path`` and ``uniseg-hub predict -v`` say so).
"""

from __future__ import annotations

import functools
import os

ENV = "THP_MEM_ALLOC_ENABLE"


def enable_by_default() -> None:
    """``THP_MEM_ALLOC_ENABLE=1`` unless the environment already sets it."""
    os.environ.setdefault(ENV, "1")


@functools.cache
def huge_pages_active() -> bool:
    """Whether large PyTorch CPU tensors get huge pages in this process: a 64 MiB tensor (above glibc's largest
    mmap threshold, so always fresh memory, never reused heap) is allocated and written, and the process's
    ``AnonHugePages`` (``/proc/self/smaps_rollup``) must grow by at least one 2 MiB page (~10 ms). Probed once per
    process: PyTorch reads the switch once, at its first allocation, so the answer cannot change afterwards."""
    import torch

    before = _anon_huge_kib()
    if before is None:
        return False
    probe = torch.ones(64 << 20, dtype=torch.uint8)
    after = _anon_huge_kib()
    del probe
    return after is not None and after - before >= 2048


def _anon_huge_kib() -> int | None:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def kernel_mode() -> str:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``; ``unknown`` where it cannot be read): PyTorch's
    switch helps in ``madvise`` mode; ``always`` gives huge pages without it, ``never`` disables them."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "unknown"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text.strip()
