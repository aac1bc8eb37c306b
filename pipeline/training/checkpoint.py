"""Checkpoints: atomic saves, data-only loads, every RNG state, checked on load.

A checkpoint is a dict of tensors and plain Python values (model, optimizer
and scaler state, the position in the run, history, class names,
normalisation, configs, one RNG state per rank), so it loads with
``torch.load(weights_only=True)``: an untrusted file can carry data only.

What it records to continue a run exactly (``--resume``):

* ``config``: the model, optimiser/schedule, loader and run configs, so
  ``--resume`` needs no other option;
* ``position``: ``{"epoch": e, "step": k, "sums": {...}}``, the next batch to
  train is batch ``k`` of epoch ``e`` (``k = 0`` after a whole epoch) and
  ``sums`` are the running train-loss/accuracy sums of a partial epoch;
* ``precision``: the autocast dtype it trained with (``bfloat16``,
  ``float16`` or ``fp32``); another machine may continue in another one;
* ``epoch``: the last whole epoch (0-based; -1 if none yet).

:func:`load_checkpoint` checks the structure before anything uses it; a
file that is not one of these fails with "not a checkpoint of this tool:
PATH (why)".

Continuing a run: ``--resume`` takes the model and the recipe from the
checkpoint (:func:`resume_plan`) and checks it fits (:func:`check_resume`);
a new run never writes into another run's folder (:func:`check_out`). The
training loop restores the rest (weights, optimiser, scaler, RNGs, position)
in ``Trainer.restore``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ..common.config import (ConfigError, LoaderConfig, ModelConfig, OptimConfig, RunConfig, TrainPlan, from_dict,
                             to_dict)
from ..common.errors import UserError, local_path
from ..storage.store import Store, is_url
from ..common.files import atomic_write
from ..common.untrusted import printable, regular_file

FORMAT = "simpsons-shards-checkpoint-2"
READS = ("simpsons-shards-checkpoint-1", FORMAT)  # -1 lacks position/precision: resumes at an epoch's end


class CheckpointError(UserError):
    """A checkpoint that is missing, foreign, truncated or does not fit."""


def rng_state(transform) -> dict:
    """This process's RNG states: torch CPU (dropout), the augmentation generator, CUDA."""
    state = {"torch": torch.get_rng_state(), "augment": transform.generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, transform) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is)."""
    torch.set_rng_state(state["torch"])
    transform.generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic save: a crash or a refused write mid-way never destroys the previous checkpoint.

    The archive is built in memory and written by Python: torch's own zip
    writer reports an OS failure (quota, file-size limit, I/O error) as a
    RuntimeError without its errno, which would reach the user as a C++
    stack; a Python write raises the OSError that :func:`atomic_write` turns
    into one line naming the file and the reason.
    """
    buf = io.BytesIO()
    torch.save({**payload, "format": FORMAT}, buf)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(buf.getbuffer()))


def _foreign(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"not a checkpoint of this tool: {path} ({why})")


def _need(ok: bool, path: Path, why: str) -> None:
    if not ok:
        raise _foreign(path, why)


def _checkpoint_file(path: Path) -> None:
    """CheckpointError unless ``path`` is a regular file: a folder (a run's names its checkpoint), a
    missing path, a FIFO or a device (refused from its ``stat``, never opened) is one line."""
    if path.is_dir():
        found = [n for n in ("interrupted.pt", "last.pt", "best.pt") if (path / n).is_file()]
        raise CheckpointError(f"{path}: is a {'run ' if found else ''}folder, not a checkpoint; pass "
                              + (f"{path / found[0]}" if found else "the last.pt or best.pt of a run folder"))
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; pass the last.pt or best.pt of a run folder")
    regular_file(path, "the last.pt or best.pt of a run folder", CheckpointError)


def _stored_entries(path: Path) -> None:
    """CheckpointError unless the file is a zip archive (every torch.save since 1.6 writes one) whose
    every entry is stored as is and within the file.

    ``torch.save`` never compresses, so a compressed entry is a crafted file: a few MB
    that would inflate to gigabytes in ``torch.load``. Read from the zip's directory only."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except zipfile.BadZipFile:
        raise _foreign(path, "not a PyTorch checkpoint file: not a zip archive (truncated, or another format)") \
            from None
    except (OSError, ValueError) as exc:
        raise _foreign(path, f"unreadable zip archive ({exc})") from None
    size = path.stat().st_size
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    _need(not packed, path, f"compressed entries ({printable(packed[0])}), which torch.save never writes; "
                            f"refused unread" if packed else "")
    _need(sum(e.file_size for e in entries) <= size, path, "its entries declare more bytes than the file holds")


def load_checkpoint(path: Path, map_location="cpu", for_resume: bool = False) -> dict:
    """Load a checkpoint as data only (``weights_only=True``) and check its structure.

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go (``cpu`` loads a CUDA checkpoint anywhere).
        for_resume: also require what continuing a run needs.

    Raises:
        CheckpointError: missing, not loadable as data, or not this tool's.
    """
    path = Path(path)
    _checkpoint_file(path)
    _stored_entries(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            text = "it holds Python objects, not only tensors and plain data; refused unread"
        raise _foreign(path, text) from None
    _need(isinstance(ckpt, dict), path, f"a {type(ckpt).__name__}, not a dict")
    _need(ckpt.get("format") in READS, path, "no simpsons-shards format tag")
    try:
        names, model, cfg = ckpt["class_names"], ckpt["model"], ckpt["config"]
        _need(isinstance(cfg, dict) and isinstance(cfg.get("model"), dict), path, "its config is not a dict of "
                                                                                 "configs with a model config")
        mcfg = cfg["model"]
        _need(isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names), path,
              "bad class_names")
        _need(isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values()), path,
              "model is not a state dict")
        ema = ckpt.get("ema")
        _need(ema is None or (isinstance(ema, dict) and isinstance(ema.get("weights"), dict) and all(
            isinstance(v, torch.Tensor) for v in ema["weights"].values())), path, "ema is not a state dict")
        _need(len(ckpt["mean"]) == 3 and len(ckpt["std"]) == 3, path, "bad mean/std")
        _need(mcfg["num_classes"] == len(names) and isinstance(mcfg["image_size"], int), path,
              "model config does not match its class names")
        if for_resume:
            for key in ("optim", "loader", "run"):
                _need(isinstance(cfg[key], dict), path, f"no {key} config")
            _need(isinstance(ckpt["optimizer"], dict) and isinstance(ckpt["scaler"], dict), path,
                  "no optimizer or scaler state")
            _need(isinstance(ckpt["epoch"], int) and isinstance(ckpt["history"], list), path, "no epoch")
            _need(isinstance(ckpt["rng"], list) and all(isinstance(r, dict) for r in ckpt["rng"]), path,
                  "no RNG states")
            try:   # the plan a resume continues: each value in its range, checked where the file is named
                for cls, key in ((ModelConfig, "model"), (OptimConfig, "optim"), (LoaderConfig, "loader")):
                    from_dict(cls, cfg[key])
            except ConfigError as exc:
                raise _foreign(path, f"its {key} config: {exc}") from None
    except KeyError as exc:
        raise _foreign(path, f"lacks {printable(str(exc))}") from None
    except TypeError as exc:   # a value of the wrong type where a container was expected
        raise _foreign(path, f"malformed contents ({printable(str(exc))})") from None
    ckpt.setdefault("position", {"epoch": ckpt.get("epoch", -1) + 1, "step": 0, "sums": None})
    ckpt.setdefault("precision", "bfloat16" if cfg.get("run", {}).get("amp") else "fp32")
    return ckpt


def load_weights(model: torch.nn.Module, ckpt: dict, path: Path, averaged: bool = False) -> None:
    """Load a checkpoint's weights into ``model``, or say why they do not fit.

    Args:
        averaged: the moving average of the weights where the run kept one
            (what it validated; for inference), else the trained weights.
    """
    try:
        model.load_state_dict(ckpt["ema"]["weights"] if averaged and ckpt.get("ema") else ckpt["model"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise _foreign(path, f"its weights do not fit a {ckpt['config']['model']['name']} model: {first}") from None


# --- continuing a run ----------------------------------------------------------------------------

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
        raise TrainingError(f"{resume} was written by {len(ckpt['rng'])} processes and this run has {world}: "
                            f"each rank's place in the epoch and its random state were saved, so another number "
                            f"of ranks would not continue the same sample order; resume with {len(ckpt['rng'])} "
                            f"processes in all (nodes x --nproc_per_node)")
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
    out = local_path(out, "--out, the run folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a folder (--out names the run folder); pass another --out")
    if shards is not None and not is_url(shards):
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


def resume_shards(ckpt: dict, resume: Path, given) -> "Path | str":
    """The shard set a resumed run reads: ``given``, else the checkpoint's (a folder that must still be
    there, or the URL of a set in object storage, checked when it is opened)."""
    if given is not None:
        return given if is_url(given) else Path(given)
    recorded = ckpt.get("shards")
    if not recorded:
        return Path("shards")
    if not isinstance(recorded, str) or len(recorded) > 4096:
        raise _foreign(resume, "its shard folder is not a path")
    if is_url(recorded):
        try:
            Store(recorded)   # a scheme this tool reads, its backend installed
        except UserError as exc:
            raise CheckpointError(f"{exc}; or pass --resume {resume} --shards ANOTHER_SET") from None
        return recorded
    if not (Path(recorded) / "manifest.json").is_file():
        raise TrainingError(f"{recorded}: the shard folder {resume} was trained on is not there (moved or "
                            f"deleted); if it moved, pass its new place: --resume {resume} --shards NEW_PLACE "
                            f"(its classes and size are checked)")
    return Path(recorded)


def restore_run(ckpt: dict, path: Path, run) -> tuple:
    """Load a checkpoint into a run's parts (``model``, ``ema``, ``optimizer``, ``prec``, ``transform``,
    ``ctx``, ``say``: a :class:`pipeline.training.train.Trainer`): (history, best F1, position).

    Raises:
        CheckpointError: an average, optimiser state or position that does not fit, naming ``path``.
    """
    from .steploop import RunPosition

    load_weights(run.model, ckpt, path)
    if run.ema is not None:
        if not isinstance(ckpt.get("ema"), dict):
            raise CheckpointError(f"not a checkpoint of this tool: {path} (its recipe averages the weights "
                                  f"but it holds no average)")
        run.ema.load_state_dict(ckpt["ema"])
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"not a checkpoint of this tool: {path} (optimizer state does not fit: "
                              f"{str(exc).splitlines()[0][:120]})") from None
    if ckpt["precision"] != run.prec.name:
        run.say(f"{path} trained in {ckpt['precision']}; this machine continues in {run.prec.name}")
    if run.prec.scaler.is_enabled() and ckpt["scaler"]:
        run.prec.scaler.load_state_dict(ckpt["scaler"])  # else a fresh scale: fp16 starts here
    set_rng_state(ckpt["rng"][run.ctx.rank], run.transform)
    try:
        position = RunPosition.from_dict(ckpt["position"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"not a checkpoint of this tool: {path} (bad position: {exc})") from None
    return list(ckpt["history"]), float(ckpt.get("best_f1", -1.0)), position
