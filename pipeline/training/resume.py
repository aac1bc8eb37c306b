"""What continuing a run needs: the checkpoint's own plan, and the checks before it resumes.

``--resume`` takes the model and the recipe from the checkpoint
(:func:`resume_plan`); a new run never writes into another run's folder
(:func:`check_out`). The training loop restores the rest (weights,
optimiser, scaler, RNGs, position) in ``Trainer.restore``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig, TrainPlan, from_dict, to_dict
from ..common.errors import UserError


class TrainingError(UserError):
    """A run that cannot start or must stop (mismatch, divergence)."""


# What a resumed run must share with its checkpoint (the rest, such as the
# device, workers, cache, precision and output folder, may change).
_SAME_ON_RESUME = {"model": ("name", "widths"),
                   "optim": ("optimizer", "lr", "weight_decay", "schedule", "label_smoothing", "ema", "min_res", "ramp"),
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
            theirs = cfg[part].get(k)
            if k in cfg[part] and (list(theirs) if isinstance(theirs, (list, tuple)) else theirs) != (
                    list(mine[k]) if isinstance(mine[k], (list, tuple)) else mine[k]):
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
CHECKPOINTS = ("interrupted.pt", "last.pt", "best.pt")


def _our_config(path: Path) -> bool:
    """Is ``path`` a config.json this tool wrote (a run's plan)?"""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and {"model", "optim", "loader", "run"} <= data.keys()
    except (OSError, ValueError):
        return False


def check_out(out: Path, resume: Optional[Path], shards: Optional[Path] = None) -> None:
    """A new run never overwrites another run's files; a resumed one continues in place.

    A folder whose only run file is a config.json of this tool (a run stopped
    before its first checkpoint) holds nothing to protect: a new run starts
    there. The run folder may not be, or lie inside, the shard folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a folder (--out names the run folder); pass another --out")
    if shards is not None:
        s, o = Path(shards).resolve(), out.resolve()
        if o == s or s in o.parents:
            raise UserError(f"{out}: is inside the shard folder {shards}; pass an --out outside it, such as "
                            f"runs/NAME")
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if existing == ["config.json"] and _our_config(out / "config.json"):
        return  # stopped before it trained anything: nothing to resume, nothing to keep
    if existing and (resume is None or Path(resume).resolve().parent != out.resolve()):
        checkpoint = next((n for n in CHECKPOINTS if n in existing), None)
        how = f"continue it with --resume {out / checkpoint} or pass" if checkpoint else "pass"
        raise TrainingError(f"{out} already holds a run ({', '.join(existing)}); {how} another --out")


# --resume takes these from the checkpoint; a value given with it must equal the checkpoint's.
RECIPE_KEYS = {"model": ("model", "name"), "recipe": ("run", "recipe"), "batch_size": ("loader", "batch_size"),
               "lr": ("optim", "lr"), "seed": ("run", "seed"), "augment": ("loader", "augment"),
               "balance": ("loader", "balance"), "tta": ("run", "tta"), "ema": ("optim", "ema"),
               "min_res": ("optim", "min_res"), "widths": ("model", "widths")}


def check_given(ckpt: dict, resume: Path, given: dict) -> None:
    """Recipe options given with ``--resume`` must equal the checkpoint's (users rerun their command
    line with ``--resume`` appended); a different value is refused, naming both.

    Args:
        given: option name (a RECIPE_KEYS key) -> the value given.
    """
    cfg = ckpt["config"]
    for name, value in given.items():
        part, key = RECIPE_KEYS[name]
        had = cfg.get(part, {}).get(key)
        if isinstance(had, (list, tuple)) and isinstance(value, (list, tuple)):
            had, value = list(had), list(value)   # a checkpoint's config may hold a list where we have a tuple
        same = had == value or (isinstance(had, (int, float)) and isinstance(value, (int, float))
                                and float(had) == float(value))
        if not same:
            flag = "--" + name.replace("_", "-")
            raise TrainingError(f"{resume} was trained with {flag} {had!r}, not {value!r}; --resume continues the "
                                f"checkpoint's own recipe: drop {flag} (or start a new run with another --out)")


def resume_shards(ckpt: dict, resume: Path, given: Optional[Path]) -> Path:
    """The shard folder a resumed run reads: ``given``, else the checkpoint's, which must still be there."""
    if given is not None:
        return Path(given)
    recorded = ckpt.get("shards")
    if not recorded:
        return Path("shards")
    if not (Path(recorded) / "manifest.json").is_file():
        raise TrainingError(f"{recorded}: the shard folder {resume} was trained on is not there (moved or "
                            f"deleted); if it moved, pass its new place: --resume {resume} --shards NEW_PLACE "
                            f"(its classes and size are checked)")
    return Path(recorded)
