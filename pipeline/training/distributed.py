"""The collectives of multi-process training under ``torchrun``: sums, gathers, broadcasts, barriers.

The process group itself is joined by :func:`pipeline.training.runtime.setup`.
In a plain single-process run every helper here is a no-op, so the training
loop is written once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .runtime import DistContext


def all_reduce_sum(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; a no-op in one process)."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


def broadcast_buffers(ctx: DistContext, model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP syncs buffers at the start of each forward, so after the last step
    each rank's statistics differ by its own last batch; evaluating with one
    set keeps the gathered metrics those of the checkpointed model.
    """
    if ctx.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
