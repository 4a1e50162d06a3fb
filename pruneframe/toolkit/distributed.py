"""``torchrun`` support for calibration loops: which rows a rank processes and summing across ranks.

Every helper works unchanged in a single process (``torch.distributed`` not initialised): the rank
is 0 of a world of 1, the shard is everything and the reductions do nothing, so single-process
results are bit-for-bit those of code that never heard of ranks.

A loop that shards its batches with :func:`shard_rows`, weights each rank's mean loss by
:func:`shard_weight` and sums gradients with :func:`all_reduce_sum_` computes the same global-batch
gradient as one process would (up to the order of floating-point sums), so results do not depend
on the number of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

__all__ = [
    "world",
    "is_main_process",
    "process_group_from_env",
    "shard_rows",
    "shard_weight",
    "all_reduce_sum_",
    "summed",
    "sharded_backward",
]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (the one that writes files and shows progress)."""
    return world()[0] == 0


def shard_rows(rows: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The entries of ``rows`` that ``rank`` processes: round-robin, so ranks differ by at most one.

    Raises:
        ValueError: when ``rank`` is not in ``[0, world_size)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return rows[rank::world_size]


def shard_weight(local: int, total: int) -> float:
    """Weight of a rank's mean loss over ``local`` of the ``total`` rows, so the weighted sum over ranks is the global mean."""
    if total < 1 or not 0 <= local <= total:
        raise ValueError(f"a shard of {local} rows out of {total}")
    return local / total


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place; nothing to do in a single process."""
    if world()[1] == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def summed(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all ranks, on ``t``'s device (``t`` itself in a single process).

    Unlike :func:`all_reduce_sum_` the tensor may live anywhere: under NCCL a CPU tensor is reduced
    on this rank's GPU and brought back.
    """
    if world()[1] == 1:
        return t
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buffer = t.detach().to(on, copy=True)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(t.device)


def sharded_backward(loss_backward: Callable[[torch.Tensor, float], torch.Tensor], rows: torch.Tensor, params: list[torch.Tensor], where: str) -> float:
    """Loss on this rank's share of ``rows``, backward, gradients summed over ranks; returns the global loss.

    ``loss_backward(rows, weight)`` backpropagates ``weight`` times the mean loss over ``rows`` and
    returns that mean loss. In one process this is ``loss_backward(rows, 1)``. Across ranks each mean
    loss is weighted by its share of the rows, so the summed gradient is that of the global batch;
    every rank checks the same summed loss, so a non-finite loss stops all ranks alike.

    Raises:
        FloatingPointError: the loss is not finite; the message starts with ``where``.
    """
    rank, size = world()
    if size == 1:
        total = loss_backward(rows, 1.0).float()
    else:
        local = shard_rows(rows, rank, size)
        weight = shard_weight(len(local), len(rows))
        total = loss_backward(local, weight).float() * weight if len(local) else torch.zeros((), device=params[0].device)
        total = summed(total)
        for p in params:  # a rank without rows (or a parameter without a path) contributes zeros
            p.grad = summed(p.grad if p.grad is not None else torch.zeros_like(p))
    if not torch.isfinite(total):
        raise FloatingPointError(f"{where}: non-finite loss {total.item()}")
    return float(total)


@contextmanager
def process_group_from_env() -> Iterator[tuple[int, int]]:
    """Join the ``torchrun`` job this process was started in, for the block; yields ``(rank, world_size)``.

    Does nothing (and yields ``(0, 1)``) outside ``torchrun`` (``WORLD_SIZE`` unset or 1) or when a
    process group already exists. Backend: NCCL with one GPU per rank (``LOCAL_RANK``) where CUDA is
    available, otherwise Gloo.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        yield world()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield world()
    finally:
        dist.destroy_process_group()
