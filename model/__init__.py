"""The two reference architectures, and one compact modern extra, behind one factory.

Importing this package (its tables, :mod:`model.rules`) does not import
torch: the networks' modules load on first use, so ``pipeline.common.config``
and ``cli.py --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Optional, Sequence

from .rules import size_problem, widths_problem

if TYPE_CHECKING:
    from torch import nn

# name -> (module, class) of each network
MODELS = {"cnn4conv": ("cnn4conv", "CNN4Conv"), "bart": ("bart", "BART"), "resnet": ("resnet", "ResNetS")}

# Models that pool globally before their head, so they accept any input side
# (progressive resizing); the notebooks' networks flatten a size fixed at build.
ANY_SIZE = ("resnet",)

# Each notebook's own recipe: (image size, optimizer, lr, batch, epochs, val split, seed).
NOTEBOOK_RECIPES = {
    "cnn4conv": {"image_size": 64, "lr": 1e-4, "batch_size": 32, "epochs": 40, "val_frac": 0.15, "seed": 42},
    "bart": {"image_size": 128, "lr": 1e-3, "batch_size": 32, "epochs": 25, "val_frac": 0.20, "seed": 10},
}


def create_model(name: str, *, num_classes: int = 42, image_size: int = 128,
                 widths: Optional[Sequence[int]] = None) -> "nn.Module":
    """Build a reference network.

    Args:
        name: ``cnn4conv`` or ``bart`` (the notebooks'), or ``resnet`` (:class:`ResNetS`).
        num_classes: output logits.
        image_size: input side in pixels; a multiple of 16 (both flatten
            sizes are computed from it).
        widths: ``resnet`` only: channels of the stem and three stages
            (None: :data:`model.resnet.WIDTHS`; the default recipe trains
            ``pipeline.common.config.RESNET_WIDTHS``).

    Raises:
        ValueError: unknown name, a size that is not a multiple of 16, or
            widths for a network that has its own.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    problem = size_problem(image_size) or widths_problem(widths, name)   # every stage's rules (model.rules)
    if problem:
        raise ValueError(problem)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    module, cls = MODELS[name]
    network = getattr(importlib.import_module(f".{module}", __name__), cls)
    if widths:
        return network(num_classes=num_classes, image_size=image_size, widths=tuple(int(w) for w in widths))
    return network(num_classes=num_classes, image_size=image_size)


def count_parameters(model: "nn.Module") -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
