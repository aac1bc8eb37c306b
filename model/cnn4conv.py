"""CNN4Conv, the first reference notebook's network (64x64, ~76% val acc).

conv 3-32 (pad 1), conv 32-32 (no pad), max-pool, dropout .25,
conv 32-64 (pad 1), conv 64-64 (no pad), max-pool, dropout .25,
FC 64*14*14-512, dropout .5, FC 512-classes; ReLU after every conv and the
hidden FC. The unpadded convs shrink the map by 2 px, so at 64 px the map
is 64 -> 62 -> 31 -> 29 -> 14 and the flatten size is 64*14*14 = 12,544;
at other sizes it is computed the same way.
"""

from __future__ import annotations

import torch
from torch import nn


def flat_side(image_size: int) -> int:
    """Side of the last feature map: ((s - 2) // 2 - 2) // 2."""
    return ((image_size - 2) // 2 - 2) // 2


class CNN4Conv(nn.Module):
    """The notebook's four-conv network.

    Args:
        num_classes: output logits (42 for the Simpsons set).
        image_size: input side in pixels (64 in the notebook).
    """

    def __init__(self, num_classes: int = 42, image_size: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(0.25),
        )
        side = flat_side(image_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
