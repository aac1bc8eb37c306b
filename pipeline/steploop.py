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


class StopRequest:
    """Ctrl-C asks the loop to stop at the next step boundary, where the state
    is whole (a KeyboardInterrupt inside ``optimizer.step`` could leave half
    the weights updated); a second Ctrl-C interrupts at once. Under torchrun
    (every rank gets the signal at a different step) and off the main thread
    the default handler stays."""

    def __init__(self, active: bool) -> None:
        self.requested = False
        self.active = active and threading.current_thread() is threading.main_thread()
        self._old = None

    def __enter__(self) -> "StopRequest":
        if self.active:
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._old)


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
