"""Data-parallel fine-tuning under ``torchrun``: process group, global-batch loss, rank helpers.

:func:`uniseg_hub.training.finetune` (and ``uniseg-hub finetune``) run unchanged under
``torchrun --nproc_per_node=N``: :func:`init_distributed` reads torchrun's environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group (NCCL on CUDA,
gloo on CPU); the model is wrapped in :class:`torch.nn.parallel.DistributedDataParallel`. There is no process
management here: torchrun starts, watches and stops the workers (a worker that dies stops the whole job).

A run on ``N`` processes with ``batch_size=b`` per process equals a single-process run with ``batch_size=N*b``
and the same seed (up to float rounding):

* every rank holds the same sampling/augmentation generator, draws the whole global batch (``N*b`` patch
  positions and augmentation seeds) and crops and augments only its own slice ``[rank*b, (rank+1)*b)``;
* cross-entropy is a mean over voxels and, without ``batch_dice``, Dice is a mean over samples, so DDP's
  average of the ranks' gradients is the gradient of the single-process loss;
* with ``batch_dice`` (the official recipe) the Dice statistics (true positives, predicted and reference
  volumes per class) are summed over all ranks before the Dice is formed
  (:class:`~uniseg_hub.training.losses.DiceCELoss` with ``global_batch=True``), so
  the Dice is the one of the global batch, as in one process;
* gradient clipping runs after DDP's all-reduce, on identical gradients on every rank.

UniSeg uses instance normalisation, which has no batch statistics, so ``SyncBatchNorm`` is not needed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..resources import resolve_device

__all__ = ["DistributedContext", "init_distributed", "group_context", "sum_across_ranks"]

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistributedContext:
    """Where this process stands in the job.

    Attributes:
        rank, local_rank, world_size: torchrun's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (0, 0, 1 alone).
        device: this process's device (``cuda:<local_rank>`` for a CUDA run under torchrun).
        owns_group: this context created the process group (and :meth:`close` destroys it).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, writes checkpoints and logs."""
        return self.rank == 0

    def part(self, per_rank: int) -> slice | None:
        """This rank's slice of a global batch of ``per_rank * world_size`` samples (``None`` alone)."""
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank) if self.enabled else None

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (itself when alone).

        ``find_unused_parameters`` is on: UniSeg's multi-stem first block uses one stem conv per batch, and the
        coarsest deep-supervision head has loss weight 0.
        """
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return float(t) / self.world_size

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled and self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        elif self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (set by torchrun), found {value!r}") from None


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """The :class:`DistributedContext` of this process; joins torchrun's process group when launched by it.

    * A process group already initialised by the caller is used as it is (and left open).
    * Under torchrun (``WORLD_SIZE`` > 1 in the environment), the group is initialised from the environment:
      NCCL when training on CUDA, gloo on CPU. ``device`` gives the device type (``"cpu"`` or ``"cuda"``;
      default CUDA when available); the CUDA index is always ``LOCAL_RANK``.
    * Otherwise the run is a single process on ``device``.
    """
    want = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        return group_context(want)
    if _env_int("WORLD_SIZE", 1) > 1:
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed run, but {missing} are not set: "
                               "launch with `torchrun --nproc_per_node=N ...`")
        if not dist.is_available():
            raise RuntimeError("this PyTorch build has no torch.distributed; cannot run under torchrun")
        rank, local, world = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)
    else:
        return DistributedContext(device=want)
    if want.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} needs CUDA device cuda:{local}, but this node has "
                               f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node <= the GPU count")
        want = torch.device("cuda", local)
        torch.cuda.set_device(want)
    backend = "nccl" if want.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=want if want.type == "cuda" else None)
    if rank == 0:
        logger.info("distributed run: %d processes, backend %s", world, backend)
    return DistributedContext(rank=rank, local_rank=local, world_size=world, device=want, owns_group=True)


def group_context(device: str | torch.device | None = None) -> DistributedContext:
    """The context of an already initialised process group (a single process when there is none).

    On CUDA the device index is ``LOCAL_RANK`` (else the rank modulo the GPU count)."""
    want = resolve_device(device)
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(device=want)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = 0
    if want.type == "cuda":
        local = _env_int("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1))
        want = torch.device("cuda", local)
        torch.cuda.set_device(want)
    return DistributedContext(rank=rank, local_rank=local, world_size=world, device=want)


class _SumAcrossRanks(torch.autograd.Function):
    """Forward: the sum over ranks. Backward: ``world_size`` x the incoming gradient, no communication.

    The summed value enters a loss that is identical on every rank, so the true gradient of the sum with respect
    to this rank's term is the sum over ranks of identical incoming gradients; DDP then averages over ranks.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        ctx.world_size = dist.get_world_size()
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * ctx.world_size


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks of the process group, differentiable under DDP's gradient averaging
    (every rank must use the result in the same loss); ``tensor`` itself without a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _SumAcrossRanks.apply(tensor)
    return tensor
