"""The step loop's helpers: Ctrl-C at a step boundary, a NaN check that never waits, sync debugging.

Kept apart from ``train.py`` because each is a small piece of machinery
with one job, and the CUDA promise (no host sync per step) rests on them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

import torch
from torch import nn


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal at a step boundary, its state saved; ``signum`` says which
    (the CLI exits 128 + signum: 130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


# Under torchrun the ranks agree on stopping (one all-reduce of a flag): a
# scheduler's SIGTERM reaches every rank at a slightly different step, and
# they must stop at the same one to save a whole checkpoint. On CPU they
# compare after every step (an all-reduce of two numbers against a step of
# seconds: the stop must fit a 30 s grace period, BENCHMARKS.md
# "Preemption"); on CUDA every STOP_EVERY steps, since reading the flag is
# the one host sync of the step loop under torchrun.
STOP_EVERY = 10


class StopRequest:
    """Ctrl-C or SIGTERM (a scheduler's preemption: SLURM, Kubernetes,
    torchrun) asks the loop to stop at the next step boundary, where the
    state is whole (a KeyboardInterrupt inside ``optimizer.step`` could
    leave half the weights updated); a second signal interrupts at once.
    Under torchrun the ranks agree on the step through :meth:`agreed`.
    Off the main thread the default handlers stay."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, active: bool = True) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self.active = active and threading.current_thread() is threading.main_thread()
        self._old: dict = {}

    def __enter__(self) -> "StopRequest":
        if self.active:
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise Stopped(signum)
        self.requested = True
        self.signum = int(signum)

    def agreed(self, ctx, step: int) -> bool:
        """Whether to stop after this step; under torchrun every rank gets the same answer.

        Args:
            ctx: the run's distributed context (``ctx.distributed``, ``ctx.device``).
            step: steps done in this epoch; on CUDA ranks compare flags every STOP_EVERY steps.
        """
        if not ctx.distributed:
            return self.requested
        if ctx.device.type == "cuda" and step % STOP_EVERY:
            return False
        import torch.distributed as dist

        flag = torch.tensor([int(self.requested), self.signum if self.requested else 0], device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag[0]) and not self.requested:
            self.requested, self.signum = True, int(flag[1])
        return bool(int(flag[0]))

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


class Holder(nn.Module):
    """One tensor as a module buffer, so :func:`distributed.broadcast_buffers` can send it."""

    def __init__(self, t: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("t", t)


class NanCheck:
    """Has a non-finite loss been seen? Without waiting for the device.

    On CUDA the count is copied to pinned memory and read once that copy
    has landed (an event query, not a wait), so the answer lags by one
    check (20 steps); on CPU it is read directly.
    """

    def __init__(self, bad: torch.Tensor) -> None:
        self.bad = bad
        self.cuda = bad.device.type == "cuda"
        self.host = torch.zeros((), dtype=torch.int64, pin_memory=True) if self.cuda else None
        self.event = None

    def failed(self, final: bool = False) -> bool:
        if not self.cuda:
            return bool(int(self.bad))
        if final:
            return bool(int(self.bad))  # a deliberate sync, outside the step loop
        seen = self.event is not None and self.event.query() and bool(int(self.host))
        if self.event is None or self.event.query():
            self.host.copy_(self.bad, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        return seen


@contextlib.contextmanager
def sync_debug(mode: Optional[str]):
    """``torch.cuda.set_sync_debug_mode(mode)`` inside, restored after (no-op for None)."""
    if mode is None:
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)
