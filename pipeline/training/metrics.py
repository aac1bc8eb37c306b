"""Scores of a model: accuracy and macro-F1, and evaluation over a batch loader.

Used by training (every epoch's validation), ``evaluate`` and the bench, so
a figure means the same everywhere.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from . import distributed


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
                     label_smoothing: float = 0.0, ctx: Optional[distributed.DistContext] = None, tta: bool = False) -> dict:
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
