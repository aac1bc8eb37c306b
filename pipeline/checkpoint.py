"""Checkpoints: atomic saves, data-only loads, every RNG state.

A checkpoint is a dict of tensors and plain Python values (model, optimizer,
scheduler and scaler state, epoch, history, class names, normalisation,
configs, one RNG state per rank), so it loads with
``torch.load(weights_only=True)``: an untrusted file can carry data only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointError(Exception):
    """A checkpoint that is missing or cannot be loaded."""


def rng_state(transform) -> dict:
    """This process's RNG states: torch CPU (dropout), the augmentation generator, CUDA."""
    state = {"torch": torch.get_rng_state(), "augment": transform.generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, transform) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    transform.generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic save: a crash mid-write never destroys the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint as data only (``weights_only=True``: nothing is unpickled)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises several types for bad files
        raise CheckpointError(f"{path}: not a loadable checkpoint ({exc})") from exc
