"""Multi-process training under ``torchrun``: process group, rank, reductions.

``torchrun --nproc_per_node=N cli.py train ...`` sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; :func:`setup` reads them and joins
the process group (NCCL on CUDA, gloo on CPU). A plain ``python cli.py
train`` has no WORLD_SIZE and stays single-process: every helper here is
then a no-op, so the training loop is written once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank r of world_size, on device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, plots and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistContext:
    """Join the process group when launched by torchrun; pick this rank's device.

    Args:
        device: the resolved device (``train.resolve_device``); under
            torchrun CUDA means ``cuda:LOCAL_RANK``.

    Raises:
        RuntimeError: fewer GPUs than local ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.type == "cuda"
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} but only {torch.cuda.device_count()} GPUs on this node; "
                               f"lower --nproc_per_node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = device
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
        logger.info("rank %d/%d joined the process group on %s", rank, world, dev)
    return DistContext(rank, world, local, dev)


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


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
