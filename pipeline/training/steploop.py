"""The step loop's helpers: the run's position, the epoch's running sums, and when a run stops:
Ctrl-C or SIGTERM at a step boundary, a NaN check that never waits, the time budget (``--minutes``);
sync debugging.

Kept apart from ``train.py`` because each is a small piece of machinery
with one job, and the CUDA promise (no host sync per step) rests on them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..common.config import TrainPlan
from . import distributed
from .runtime import DistContext


@dataclass(frozen=True)
class PartialEpoch:
    """What an interrupted epoch had summed (over every rank) when it stopped, to carry on from."""

    loss: float      # sum of batch mean loss x batch size over the steps with a finite loss
    correct: int     # training images classified correctly
    seen: int        # training images stepped on
    wait: float      # seconds the loop waited for batches
    seconds: float   # seconds of the epoch so far


@dataclass(frozen=True)
class RunPosition:
    """Where a run stands: the next batch to train is batch ``step`` of epoch ``epoch`` (both from 0).

    A checkpoint stores it as plain data (:meth:`to_dict`); the loader's
    own state (``{"epoch", "batch"}``) is the same two numbers.
    """

    epoch: int = 0
    step: int = 0
    partial: Optional[PartialEpoch] = None   # the interrupted epoch's sums when ``step`` > 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "sums": asdict(self.partial) if self.partial else None}

    @classmethod
    def from_dict(cls, d: dict) -> "RunPosition":
        sums = d.get("sums")
        return cls(int(d["epoch"]), int(d["step"]), PartialEpoch(**sums) if sums else None)

    def loader_state(self, epoch: int) -> dict:
        """The train loader's state at the start of ``epoch``: mid-epoch when this position is inside it."""
        return {"epoch": epoch, "batch": self.step if self.epoch == epoch else 0}


class EpochSums:
    """An epoch's running sums: loss, correct and non-finite steps stay on the device (no sync per step).

    Args:
        device: where the model's outputs are.
        carried: the sums of an interrupted epoch to continue; under
            torchrun only rank 0 carries the totals (they were summed over
            every rank), each rank its own clock.
        rank: this process's rank.
    """

    def __init__(self, device: torch.device, carried: Optional[PartialEpoch] = None, rank: int = 0) -> None:
        c = carried or PartialEpoch(0.0, 0, 0, 0.0, 0.0)
        totals = rank == 0
        self.loss = torch.tensor(c.loss if totals else 0.0, dtype=torch.float64, device=device)
        self.correct = torch.tensor(c.correct if totals else 0, dtype=torch.int64, device=device)
        self.bad = torch.zeros((), dtype=torch.int64, device=device)  # applied steps with a non-finite loss
        self.seen = c.seen if totals else 0
        self.carried_wait, self.carried_seconds = c.wait, c.seconds

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
            applied: Optional[torch.Tensor]) -> None:
        """One step: a non-finite loss (of a step the scaler applied) counts as bad and adds nothing."""
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        ok = finite if applied is None else finite & applied
        self.bad += (~finite).long() if applied is None else (~finite & applied).long()
        self.loss += torch.where(ok, loss * len(labels), torch.zeros_like(loss))
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

    def all_reduce(self, ctx, with_bad: bool = True) -> None:
        """Sum loss, correct, seen (and the bad count) over every rank, in place: one collective."""
        parts = [self.loss, self.correct.double(), torch.tensor(float(self.seen), dtype=torch.float64,
                                                                device=self.loss.device)]
        total = distributed.all_reduce_sum(ctx, torch.stack(parts + ([self.bad.double()] if with_bad else [])))
        self.loss, self.correct, self.seen = total[0], total[1].long(), int(total[2])
        if with_bad:
            self.bad = total[3]

    def partial(self, wait: float, seconds: float) -> PartialEpoch:
        """The sums to save in an interrupted epoch's checkpoint (``wait``, ``seconds``: this call's)."""
        return PartialEpoch(float(self.loss), int(self.correct), self.seen, self.carried_wait + wait, seconds)

    def stats(self, wait: float, seconds: float) -> dict:
        """The epoch's row: mean train loss and accuracy, seconds, images/s, data-wait share."""
        wait += self.carried_wait
        seen = max(1, self.seen)
        return {"train_loss": float(self.loss) / seen, "train_acc": float(self.correct) / seen,
                "seconds": seconds, "images_per_s": self.seen / seconds, "data_wait": wait / seconds}


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
# seconds: the stop must fit a 30 s grace period, benchmarks/history/training.md
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


# ``train --minutes``: the next epoch is estimated from the last one's training seconds, scaled by the
# pixels of the side it trains at (progressive resizing), plus a validation's seconds if it is
# validated. Decided on rank 0 and broadcast, so every rank stops after the same epoch.
class TimeBudget:
    """The budget of ``plan.run.minutes`` (0: none) and the last validation's cost."""

    def __init__(self, plan: TrainPlan, ctx: DistContext, steps: int, val_batches: int,
                 scores: Callable[[int, int], bool]) -> None:
        self.plan, self.ctx, self.steps, self.val_batches, self.scores = plan, ctx, steps, val_batches, scores
        self.val_seconds = 0.0   # validation, checkpoint and plot of the last validated epoch

    def restore(self, history: list[dict]) -> None:
        """The last validation's cost from a resumed run's history (wall time beyond training)."""
        for prev, row in zip([{}] + history, history):
            if row.get("val_f1") is not None:
                self.val_seconds = max(0.0, float(row.get("wall_s") or 0) - float(prev.get("wall_s") or 0)
                                       - float(row.get("seconds") or 0))

    def over(self, epoch: int, stats: dict, now: float, side: int) -> bool:
        """Would the next epoch, trained at ``side``, end past ``run.minutes``? Decided after training
        ``epoch`` (this epoch's validation counted when it would be validated anyway)."""
        if not self.plan.run.minutes:
            return False
        full = self.plan.model.image_size
        val_s = 0.0
        if self.val_batches:
            # none validated yet: a view's forward costs about a quarter of a training step's image
            # (validation with TTA against training at 64 px, 2,898 vs 16,697 images)
            val_s = self.val_seconds or (stats["seconds"] * (full / stats["res"]) ** 2 * self.val_batches
                                         / self.steps * (0.5 if self.plan.run.tta else 0.25))
        this_val = val_s if self.scores(epoch, stats["res"]) else 0.0
        nxt = stats["seconds"] * (side / stats["res"]) ** 2 + (val_s if self.scores(epoch + 1, side) else 0.0)
        over = torch.tensor(float(now + this_val + nxt > 60.0 * self.plan.run.minutes), device=self.ctx.device)
        if self.ctx.distributed:
            distributed.broadcast_buffers(self.ctx, Holder(over))  # every rank stops after the same epoch
        return bool(over)
