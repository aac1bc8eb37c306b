"""The optimiser and the learning-rate schedule of a run.

The schedule is a pure function of (step, total): the position in the run
is its whole state, so resume needs nothing else and a longer run rebuilds
it for the new total.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .config import OptimConfig


def make_optimizer(o: OptimConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW; fused (one kernel for all parameters, no host sync under a GradScaler) on CUDA."""
    kw = {"fused": True} if device.type == "cuda" else {}
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, **kw)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **kw)


def lr_at(o: OptimConfig, step: int, total: int) -> tuple[float, Optional[float]]:
    """(learning rate, Adam beta1 or None) for optimizer step ``step`` (0-based) of ``total``.

    ``onecycle`` is PyTorch's ``OneCycleLR`` (cosine, pct_start .25,
    div_factor 20, final_div_factor 200, beta1 cycled .95 -> .85 -> .95),
    the same float expressions, so it gives the same numbers; written as a
    pure function of (step, total) because then the position in the run is
    the whole schedule state: resume needs nothing else, a longer run
    rebuilds it for the new total, and a tiny schedule (a 1-step warm-up)
    or a step past the end cannot crash it.
    """
    if o.schedule == "constant":
        return o.lr, None
    total = max(1, total)
    step = min(step, total)
    initial = o.lr / 20.0
    phases = ((float(0.25 * total) - 1, initial, o.lr, 0.95, 0.85),
              (total - 1, o.lr, initial / 200.0, 0.85, 0.95))
    start = 0.0
    for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start) if end > start else 1.0
            cos = math.cos(math.pi * pct) + 1
            return lr1 + (lr0 - lr1) / 2.0 * cos, m1 + (m0 - m1) / 2.0 * cos
        start = end
    raise AssertionError("unreachable")


def set_lr(optimizer: torch.optim.Optimizer, o: OptimConfig, step: int, total: int) -> None:
    """Put the schedule's lr (and Adam beta1 under ``onecycle``) for ``step`` of ``total`` into ``optimizer``."""
    lr, beta1 = lr_at(o, step, total)
    for g in optimizer.param_groups:
        g["lr"] = lr
        if beta1 is not None:
            g["betas"] = (beta1, *g["betas"][1:])
