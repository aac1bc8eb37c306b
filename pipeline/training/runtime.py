"""Where and in which precision a process computes: its device, its rank and process group under
``torchrun``, the AMP policy, CUDA switches.

``torchrun --nproc_per_node=N cli.py train ...`` sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; :func:`setup` reads them and joins
the process group (NCCL on CUDA, gloo on CPU). A plain ``python cli.py
train`` has no WORLD_SIZE and stays single-process
(:mod:`pipeline.training.distributed` holds the collectives).

Shared by training, evaluation and the bench, so they agree on what
``--amp`` and ``--device`` mean: the AMP step is written once
(:class:`Precision`: one autocast context, ``GradScaler(enabled=fp16)``,
``zero_grad(set_to_none=True)``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..common.env import cpu_has_fast_bf16
from ..common.errors import UserError

logger = logging.getLogger(__name__)


def resolve_device(name) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a device; a missing GPU is a UserError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> dict:
    """``{"peak_gpu_mb": ...}``, the CUDA allocator's high-water mark since the last call, then reset
    (host-side counters: no device sync); ``{}`` off CUDA, so CPU runs' rows are unchanged."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    torch.cuda.reset_peak_memory_stats(device)
    return {"peak_gpu_mb": round(peak, 1)}


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
        device: the resolved device (:func:`resolve_device`); under
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


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def amp_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32.

    CUDA: bf16 where the GPU runs it natively (Ampere and later; V100 and T4
    only emulate it, slower than fp16), else fp16 + GradScaler.
    CPU: bf16 when the CPU runs it natively (AVX512-BF16 or AMX: faster than
    fp32, benchmarks/history/bench.md "CPU training: dtype and memory format"), else a
    warning and fp32.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if cpu_has_fast_bf16():
        return torch.bfloat16
    logger.warning("--amp: this CPU has no native bf16, so autocast would be slower; training in fp32")
    return None


class Precision:
    """The AMP policy, written once for training and the bench.

    One autocast context (``dtype`` from :func:`amp_dtype`; disabled for
    fp32) and a ``GradScaler`` enabled only for fp16.
    """

    def __init__(self, device: torch.device, amp: bool) -> None:
        self.device_type = device.type
        self.dtype = amp_dtype(device, amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    @property
    def name(self) -> str:
        return str(self.dtype).replace("torch.", "") if self.dtype else "fp32"

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """One optimizer step on (x, y): (loss, logits, applied).

        ``applied`` is a device bool tensor, False where the fp16 GradScaler
        skipped the step for inf/nan gradients (None when no scaler runs):
        such a step changed no weight, so a NaN check must not count it.
        Nothing here waits for the device (fused AdamW takes the scaler's
        inf flag on the GPU).
        """
        with self.autocast():
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        applied = None
        if self.scaler.is_enabled():
            found = getattr(self.scaler, "_found_inf_per_device", None)  # before update() resets it
            if found is not None:
                flags = list(found(optimizer).values())
                applied = sum(flags) == 0 if flags else None
        self.scaler.update()
        return loss, logits, applied


def configure_cuda(exact: bool) -> None:
    """cuDNN autotune and TF32 matmul/conv on CUDA, unless ``exact`` (bit-exact reruns).

    Autotune picks the fastest conv algorithm per shape (fixed shapes here:
    one per batch size); TF32 runs fp32 matmuls/convs on tensor cores with
    a 10-bit mantissa, as fp32 training usually tolerates.
    """
    torch.backends.cudnn.benchmark = not exact
    torch.backends.cudnn.deterministic = exact
    torch.backends.cuda.matmul.allow_tf32 = not exact
    torch.backends.cudnn.allow_tf32 = not exact
