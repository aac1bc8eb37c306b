"""Scores of a model: accuracy and macro-F1, evaluation over a batch loader, and a run's validation.

Used by training (every epoch's validation), ``evaluate`` and the bench, so
a figure means the same everywhere.

A run validates at the shards' stored side. Under progressive resizing the
epochs trained below it are not validated, except the run's last
(:meth:`Validator.scores`): such a model is not yet trained for the stored
side, and at 64 px on 2 CPU cores a validation costs about half of a 32 px
epoch (benchmarks/history/training.md "Time to accuracy, halved").
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from ..common.config import TrainPlan
from ..reading.transform import DeviceTransform
from ..shardset.shard_format import ShardSet
from . import distributed
from .runtime import DistContext, Precision


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: Optional[list[int]] = None) -> tuple[float, float]:
    """Accuracy and macro-F1 of predicted labels (both 0.0 for no samples).

    The macro-F1 averages over the classes present in ``y_true`` (or over
    ``classes`` when given, those of them present): a prediction into a
    class absent from the evaluated data lowers the F1 of the true class
    (a miss) but adds no zero-F1 class of its own.
    """
    if not len(y_true):
        return 0.0, 0.0
    present = sorted(set(y_true.tolist()))
    labels = present if classes is None else [c for c in classes if c in set(present)]
    f1 = float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)) if labels else 0.0
    return float((y_pred == y_true).mean()), f1


def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """``model(x)``, or with ``tta`` the mean of the logits of x and its mirror image
    (test-time flip: the augmentation the model trained with, undone by averaging)."""
    logits = model(x)
    return (logits + model(x.flip(3))) / 2 if tta else logits


def evaluate_batches(model: nn.Module, loader, transform, autocast,
                     label_smoothing: float = 0.0, ctx: Optional[DistContext] = None, tta: bool = False) -> dict:
    """Loss, accuracy and macro-F1 of ``model`` over a loader (no grad).

    Under torchrun each rank scores its part of the split and the
    predictions are gathered, so every rank reports the whole split's metrics.
    ``tta`` scores the mean logits of each image and its mirror image.
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    preds, trues = [], []
    with torch.no_grad():
        for xb, yb in loader:
            with autocast():
                logits = predict_logits(model, transform(xb), tta)
            loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum",
                                                    label_smoothing=label_smoothing).double().cpu()
            preds.append(logits.argmax(1).cpu())
            trues.append(yb.cpu())
    y_pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    y_true = torch.cat(trues).numpy() if trues else np.zeros(0, dtype=np.int64)
    if ctx is not None and ctx.distributed:
        parts = distributed.gather_objects(ctx, (y_true.tolist(), y_pred.tolist(), float(loss_sum)))
        y_true = np.array([v for p in parts for v in p[0]], dtype=np.int64)
        y_pred = np.array([v for p in parts for v in p[1]], dtype=np.int64)
        loss_sum = torch.tensor(sum(p[2] for p in parts), dtype=torch.float64)
    acc, f1 = accuracy_f1(y_true, y_pred)
    return {"loss": float(loss_sum) / max(1, len(y_true)), "acc": acc, "f1": f1, "y_true": y_true, "y_pred": y_pred}


SMALL_CLASS = 150  # images; macro-F1 of the classes under this is reported apart (val_f1_small)


def small_classes(sset: ShardSet) -> list[int]:
    """The long tail: classes with fewer than SMALL_CLASS images in the whole set (train + val)."""
    counts = sset.manifest.get("class_counts", {})
    totals = np.sum([counts[k] for k in ("train", "val") if k in counts], axis=0) if counts else []
    return [c for c, n in enumerate(np.atleast_1d(totals)) if n < SMALL_CLASS]


class Validator:
    """A run's validation: its schedule (:meth:`scores`) and one pass over the val split (:meth:`__call__`)."""

    def __init__(self, sset: ShardSet, val_loader, plan: TrainPlan, ctx: DistContext,
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
