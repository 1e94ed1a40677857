"""Data-parallel training with PyTorch's own engine: torchrun + DistributedDataParallel.

    torchrun --standalone --nproc-per-node 2 -m skiprec_cli train --data D --out R
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 -m skiprec_cli train --data D --out R --device cuda

torchrun starts one process per rank and sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; :func:`from_environment` reads them and joins the process group (gloo
on the CPU, NCCL on CUDA, one GPU per local rank). A plain ``skiprec train`` sees no
``WORLD_SIZE`` and gets :data:`SINGLE`, under which the trainer never touches
``torch.distributed``: the single-process path is the one it has always been.

Every rank draws the same epoch permutation from the same seed and takes its share of
each global batch (:func:`shard_rows`), so ``[optim] batch_size`` is the global batch
whatever the number of processes. DDP averages the ranks' gradients: the mean of the
ranks' per-batch losses, which is the loss of the global batch when each rank holds as
many target positions as the others (the test checks that case to the last bit).
Rank 0 alone evaluates, decides early stopping (:func:`broadcast_flag`) and writes the
run directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: its rank among ``world_size``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that evaluates, logs and writes the run."""
        return self.rank == 0

    def device(self, configured: str) -> torch.device:
        """The configured device, on this rank's own GPU when it is CUDA."""
        device = torch.device(configured)
        if self.is_distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = DistContext()


def from_environment(device: str) -> DistContext:
    """The torchrun context, joining its process group; :data:`SINGLE` without one.

    Raises:
        ValueError: torchrun asks for NCCL on a CPU device (gloo is the CPU backend).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    context = DistContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return context


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(rows: Tensor, context: DistContext) -> Tensor:
    """This rank's contiguous share of a global batch's rows (sizes differ by <= 1)."""
    if not context.is_distributed:
        return rows
    return rows.tensor_split(context.world_size)[context.rank]


def while_every_rank_has(items: Iterator[T], context: DistContext) -> Iterator[T]:
    """``items`` up to the first step at which some rank has none left.

    Ranks reading shards of unequal size (a streamed log) so take the same number
    of steps, and their replicas and optimiser states stay equal; what the longer
    shards hold beyond that is not trained in this epoch (the shards change from
    epoch to epoch). DDP's ``Join`` would train it, but the ranks that ran out
    would skip optimiser steps and hold other AdamW states than rank 0, whose
    state the resume file saves. One small all-reduce per step.
    """
    if not context.is_distributed:
        yield from items
        return
    device = _collective_device(context)
    while True:
        item = next(items, None)
        has = torch.tensor([int(item is not None)], device=device)
        dist.all_reduce(has, op=dist.ReduceOp.MIN)
        if item is None or not bool(has.item()):
            return
        yield item


def broadcast_object(value: T | None, context: DistContext) -> T:
    """Rank 0's ``value`` (any picklable object; the others pass None) on every
    rank."""
    box: list[T | None] = [value if context.is_main else None]
    if context.is_distributed:
        dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        raise ValueError("rank 0 broadcast no value")
    return box[0]


def broadcast_flag(flag: bool, context: DistContext) -> bool:
    """Rank 0's ``flag`` on every rank (an early-stopping decision, say)."""
    if not context.is_distributed:
        return flag
    value = torch.tensor([int(flag)], device=_collective_device(context))
    dist.broadcast(value, src=0)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float], context: DistContext) -> dict[str, float]:
    """Each value averaged over the ranks (every rank passes the same keys)."""
    if not context.is_distributed or not values:
        return values
    names = sorted(values)
    tensor = torch.tensor(
        [values[name] for name in names],
        dtype=torch.float64,
        device=_collective_device(context),
    )
    dist.all_reduce(tensor)
    return {
        name: float(v) / context.world_size
        for name, v in zip(names, tensor.tolist(), strict=True)
    }


def _collective_device(context: DistContext) -> torch.device:
    # NCCL moves CUDA tensors only; gloo the CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", context.local_rank)
    return torch.device("cpu")
