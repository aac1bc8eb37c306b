"""The optimiser and the learning-rate schedule of a run.

The schedule is a pure function of (step, total): the position in the run
is its whole state, so resume needs nothing else and a longer run rebuilds
it for the new total.
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch

from ..common.config import RES_STEP, OptimConfig


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


def res_at(o: OptimConfig, epoch: int, full: int) -> int:
    """The side (px) epoch ``epoch`` (0-based) trains at under progressive resizing; ``full`` is the stored side.

    Low resolution first (FFCV's ResNet recipes): a step at 32 px costs
    about a fifth of one at 64 px on a CPU (benchmarks/history/training.md "Progressive
    resizing"), and the early epochs learn coarse features that need no
    fine detail. Epochs before ``ramp[0] * epochs`` (rounded) train at
    ``min_res``, those from ``ramp[1] * epochs`` on at ``full``, the ones
    between on a linear ramp rounded down to a multiple of ``RES_STEP`` (8). A pure
    function of the epoch, as :func:`lr_at` is of the step: resume needs no
    state, and a run extended with ``--epochs`` rebuilds it for the new total.
    """
    if not o.min_res or o.min_res >= full:
        return full
    start, end = round(o.ramp[0] * o.epochs), round(o.ramp[1] * o.epochs)
    if epoch < start:
        return o.min_res
    if epoch >= end:
        return full
    side = o.min_res + (full - o.min_res) * (epoch - start + 1) / (end - start + 1)
    return max(o.min_res, int(side) // RES_STEP * RES_STEP)


def set_lr(optimizer: torch.optim.Optimizer, o: OptimConfig, step: int, total: int) -> None:
    """Put the schedule's lr (and Adam beta1 under ``onecycle``) for ``step`` of ``total`` into ``optimizer``."""
    lr, beta1 = lr_at(o, step, total)
    for g in optimizer.param_groups:
        g["lr"] = lr
        if beta1 is not None:
            g["betas"] = (beta1, *g["betas"][1:])


class WeightEma:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    After every optimiser step, ``ema = d * ema + (1 - d) * weights`` with
    ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` (the early
    average follows the fast-moving first steps instead of the random
    init). Integer buffers (BatchNorm's step count) are copied. One
    ``_foreach_lerp_`` over all tensors: no host sync, one kernel per
    group on CUDA. Validation, ``best.pt`` and inference use the average.

    Args:
        model: the trained model (its current weights start the average).
        decay: the largest per-step decay (0.995: about the last 200 steps).
            Below it the warm-up governs: (1 + n) / (10 + n) reaches 0.995
            only at update 1,790, so for most of a run of that length (the
            default's 20 epochs of 131 steps on simpsons-real-80 are 2,620)
            the average covers about the last tenth of the steps so far,
            whatever ``decay`` is.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = float(decay), 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # state_dict tensors share storage with the parameters and buffers, which the optimiser and
        # load_state_dict update in place: the lists are built once and stay bound to both models
        live, avg = model.state_dict(), self.module.state_dict()
        floating = [k for k in avg if avg[k].is_floating_point()]
        self._avg, self._live = [avg[k] for k in floating], [live[k] for k in floating]
        self._copied = [(avg[k], live[k]) for k in avg if not avg[k].is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the average."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._avg, self._live, 1.0 - d)
        for a, b in self._copied:
            a.copy_(b)

    def state_dict(self) -> dict:
        """The averaged weights (a model state dict) and the update count, for a checkpoint."""
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
