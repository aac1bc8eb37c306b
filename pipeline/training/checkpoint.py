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
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from ..common.config import ConfigError, LoaderConfig, ModelConfig, OptimConfig, from_dict
from ..common.errors import UserError
from ..common.files import atomic_write

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
    if path.is_dir():
        found = [n for n in ("interrupted.pt", "last.pt", "best.pt") if (path / n).is_file()]
        raise CheckpointError(f"{path}: is a run folder, not a checkpoint; pass "
                              + (f"{path / found[0]}" if found else "the last.pt or best.pt of a run folder"))
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass the last.pt or best.pt of a run folder")
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 writes a zip archive
        raise _foreign(path, "not a PyTorch checkpoint file: not a zip archive (truncated, or another format)")
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
    except (KeyError, TypeError) as exc:
        raise _foreign(path, f"lacks {exc}") from None
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
