"""What continuing a run needs: the checkpoint's own plan, and the checks before it resumes.

``--resume`` takes the model and the recipe from the checkpoint
(:func:`resume_plan`); a new run never writes into another run's folder
(:func:`check_out`). The training loop restores the rest (weights,
optimiser, scaler, RNGs, position) in ``Trainer.restore``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from .config import LoaderConfig, ModelConfig, OptimConfig, RunConfig, TrainPlan, from_dict, to_dict
from .errors import UserError


class TrainingError(UserError):
    """A run that cannot start or must stop (mismatch, divergence)."""


# What a resumed run must share with its checkpoint (the rest, such as the
# device, workers, cache, precision and output folder, may change).
_SAME_ON_RESUME = {"model": ("name",), "optim": ("optimizer", "lr", "weight_decay", "schedule", "label_smoothing",
                                                   "ema"),
                   "loader": ("batch_size", "augment", "balance", "seed"), "run": ("seed", "recipe", "tta")}


def resume_plan(ckpt: dict, epochs: Optional[int] = None, **run: object) -> TrainPlan:
    """The plan a checkpoint was trained with, ``epochs`` and runtime options (``run`` fields,
    ``workers``, ``cache``) replaced: what ``--resume`` continues."""
    c = ckpt["config"]
    loader_kw = {k: run.pop(k) for k in ("workers", "cache") if run.get(k) is not None}
    run = {k: v for k, v in run.items() if v is not None}
    optim = from_dict(OptimConfig, c["optim"])
    return TrainPlan(from_dict(ModelConfig, c["model"]),
                     replace(optim, epochs=epochs) if epochs else optim,
                     replace(from_dict(LoaderConfig, c["loader"]), **loader_kw),
                     replace(from_dict(RunConfig, c["run"]), **run))


def check_resume(ckpt: dict, plan: TrainPlan, resume: Path, classes: list, size: int, world: int) -> None:
    cfg = ckpt["config"]
    if ckpt["class_names"] != classes or cfg["model"]["image_size"] != size:
        raise TrainingError(f"{resume} was trained on {cfg['model']['image_size']} px with "
                            f"{len(ckpt['class_names'])} classes; the shards differ: pass the shards it was "
                            f"trained on with --shards")
    for part, keys in _SAME_ON_RESUME.items():
        mine = to_dict(getattr(plan, part))
        for k in keys:
            if k in cfg[part] and cfg[part][k] != mine[k]:
                raise TrainingError(f"{resume} was trained with {part} {k}={cfg[part][k]!r}, not {mine[k]!r}; "
                                    f"--resume continues the checkpoint's own recipe (drop that option)")
    if len(ckpt["rng"]) != world:
        raise TrainingError(f"{resume} was written by {len(ckpt['rng'])} processes; resume with the same "
                            f"world size (got {world})")
    done = ckpt["position"]["epoch"]
    if plan.optim.epochs < done or (plan.optim.epochs == done and not ckpt["position"]["step"]):
        raise TrainingError(f"{resume} has trained {done} of {cfg['optim']['epochs']} epochs already; pass "
                            f"--epochs N with N > {done} to extend the run (the schedule is rebuilt for N)")


RUN_FILES = ("last.pt", "best.pt", "interrupted.pt", "metrics.csv", "config.json", "curves.png")


def check_out(out: Path, resume: Optional[Path]) -> None:
    """A new run never overwrites another run's files; a resumed one continues in place."""
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if existing and (resume is None or Path(resume).resolve().parent != out.resolve()):
        raise TrainingError(f"{out} already holds a run ({', '.join(existing)}); continue it with --resume "
                            f"{out / ('last.pt' if 'last.pt' in existing else existing[0])} or pass another --out")


