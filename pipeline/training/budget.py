"""``train --minutes``: stop before an epoch that would end past the time budget.

The next epoch is estimated from the last one's training seconds, scaled by
the pixels of the side it trains at (progressive resizing), plus a
validation's seconds if it is validated. Decided on rank 0 and broadcast,
so every rank stops after the same epoch.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..common.config import TrainPlan
from . import distributed
from .optim import res_at
from .steploop import Holder


class TimeBudget:
    """The budget of ``plan.run.minutes`` (0: none) and the last validation's cost."""

    def __init__(self, plan: TrainPlan, ctx: distributed.DistContext, steps: int, val_batches: int,
                 scores: Callable[[int, int], bool]) -> None:
        self.plan, self.ctx, self.steps, self.val_batches, self.scores = plan, ctx, steps, val_batches, scores
        self.val_seconds = 0.0   # validation, checkpoint and plot of the last validated epoch

    def restore(self, history: list[dict]) -> None:
        """The last validation's cost from a resumed run's history (wall time beyond training)."""
        for prev, row in zip([{}] + history, history):
            if row.get("val_f1") is not None:
                self.val_seconds = max(0.0, float(row.get("wall_s") or 0) - float(prev.get("wall_s") or 0)
                                       - float(row.get("seconds") or 0))

    def over(self, epoch: int, stats: dict, now: float) -> bool:
        """Would the next epoch end past ``run.minutes``? Decided after training ``epoch`` (this
        epoch's validation counted when it would be validated anyway)."""
        if not self.plan.run.minutes:
            return False
        o, full = self.plan.optim, self.plan.model.image_size
        side = res_at(o, epoch + 1, full)
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
