"""Distributed set-up for ``torchrun``: one process per device, DDP over gloo (CPU) or nccl (CUDA).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in one process and the collective
helpers return their input unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from torch import Tensor

from engine.errors import BackendUnavailableError

__all__ = [
    "Distributed",
    "all_reduce_sum",
    "broadcast_flag",
    "mean_over_ranks",
    "process_group_size",
    "scale_rank_gradient",
    "select_device",
    "setup_distributed",
    "sum_over_ranks",
]

logger = logging.getLogger(__name__)

_Number = TypeVar("_Number", np.int64, np.float64)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run.

    Attributes:
        rank: Global process index (0 writes files).
        world_size: Number of processes.
        local_rank: Process index on this machine (its CUDA device index).
        device: Device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group (if one was joined)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def select_device(preference: str, local_rank: int = 0) -> torch.device:
    """The training device: ``auto`` takes CUDA when usable; ``cuda`` without CUDA is an error that says why."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if preference == "cuda":
        reason = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise BackendUnavailableError(f"run.device is 'cuda' but {reason}; use --set run.device=cpu or auto.")
    return torch.device("cpu")


def setup_distributed(preference: str) -> Distributed:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, nccl on CUDA), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(preference, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        logger.info("Process %d of %d on %s.", rank, world_size, device)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(array: NDArray[_Number], ctx: Distributed) -> NDArray[_Number]:
    """Element-wise sum of an array over all processes (confusion matrices, loss sums of each shard); keeps the dtype."""
    if ctx.world_size == 1:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy().astype(array.dtype, copy=False)


def broadcast_flag(flag: bool, ctx: Distributed) -> bool:
    """True on every process when it is True on any (so all processes stop at the same epoch)."""
    if ctx.world_size == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def mean_over_ranks(value: float, ctx: Distributed) -> float:
    """Mean of a per-process number over all processes (the logged training loss of every shard, not rank 0's)."""
    if ctx.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / ctx.world_size


def process_group_size() -> int:
    """Processes in the default group, 1 when none was joined (losses ask this, they get no ``Distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """Element-wise sum over all processes whose gradient flows into this process's own contribution only.

    The value is the global sum on every process. Backward stays local (no collective in the backward pass, so it
    cannot interleave with DDP's gradient buckets): each process differentiates through its own term, and the
    processes' gradients add up to the gradient of the global expression. DDP *averages* gradients, so a loss
    built from such sums must also go through :func:`scale_rank_gradient`.

    Args:
        tensor: This process's contribution (any shape, same on all processes).

    Returns:
        The global sum, attached to ``tensor``'s graph.
    """
    if process_group_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return tensor + (total - tensor.detach())


def scale_rank_gradient(loss: Tensor) -> Tensor:
    """Same value, gradient times the world size: undoes DDP's averaging for a loss that is already global.

    A loss computed from :func:`sum_over_ranks` statistics is the same number on every process and each process's
    backward yields its share of the global gradient; DDP divides the sum of shares by the world size, which this
    factor cancels.
    """
    world = process_group_size()
    if world == 1:
        return loss
    return loss * world - loss.detach() * (world - 1)
