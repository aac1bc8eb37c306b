"""Which epochs a run validates, and the validation itself: loss, accuracy, macro-F1, the long tail's.

Validation runs at the shards' stored side. Under progressive resizing the
epochs trained below it are not validated, except the run's last: such a
model is not yet trained for the stored side, and at 64 px on 2 CPU cores a
validation costs about half of a 32 px epoch (benchmarks/history/training.md
"Time to accuracy, halved").
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from torch import nn

from ..common.config import TrainPlan
from ..reading.transform import DeviceTransform
from ..shardset.shard_format import ShardSet
from . import distributed
from .metrics import accuracy_f1, evaluate_batches
from .runtime import Precision

SMALL_CLASS = 150  # images; macro-F1 of the classes under this is reported apart (val_f1_small)


def small_classes(sset: ShardSet) -> list[int]:
    """The long tail: classes with fewer than SMALL_CLASS images in the whole set (train + val)."""
    counts = sset.manifest.get("class_counts", {})
    totals = np.sum([counts[k] for k in ("train", "val") if k in counts], axis=0) if counts else []
    return [c for c, n in enumerate(np.atleast_1d(totals)) if n < SMALL_CLASS]


class Validator:
    """A run's validation: its schedule (:meth:`scores`) and one pass over the val split (:meth:`__call__`)."""

    def __init__(self, sset: ShardSet, val_loader, plan: TrainPlan, ctx: distributed.DistContext,
                 transform: DeviceTransform, prec: Precision) -> None:
        self.loader, self.plan, self.ctx, self.transform, self.prec = val_loader, plan, ctx, transform, prec
        self.small_classes = small_classes(sset)

    def scores(self, epoch: int, side: int) -> bool:
        """Is ``epoch`` (trained at ``side``) validated? Not below the stored side, except the last."""
        return side >= self.plan.model.image_size or epoch + 1 >= self.plan.optim.epochs

    def __call__(self, epoch: int, model: nn.Module, averaged: Optional[nn.Module], score: bool = True) -> dict:
        """The validated model's val loss, accuracy, macro-F1 and the long tail's macro-F1 (None without
        val or ``score``); under torchrun the ranks' BatchNorm buffers are made equal first either way.
        ``averaged``: the moving average of the weights, which is then what is validated."""
        distributed.broadcast_buffers(self.ctx, model)
        scored = model
        if averaged is not None:  # the average is what is validated, kept as best.pt and predicted with
            distributed.broadcast_buffers(self.ctx, averaged)
            scored = averaged
        if self.loader is None or not score:
            return {"loss": None, "acc": None, "f1": None, "f1_small": None}
        self.loader.set_epoch(epoch)  # same order every epoch; keeps its stream running
        val = evaluate_batches(scored, self.loader, self.transform, self.prec.autocast, ctx=self.ctx,
                               tta=self.plan.run.tta)
        small = accuracy_f1(val["y_true"], val["y_pred"], self.small_classes)[1] if self.small_classes else None
        return {**val, "f1_small": small}
