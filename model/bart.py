"""BART, the second reference notebook's network (128x128, ~78.6% val acc).

Four blocks of (conv3x3 'same', BatchNorm, ReLU) x 2 + 2x2 max-pool +
Dropout2d (.25, .25, .4, .4) with 32-64-128-256 channels, then
Flatten, FC 256*(s/16)^2-512, ReLU, Dropout .5, FC 512-256, ReLU,
Dropout .5, FC 256-classes. At 128 px the flatten size is 256*8*8 = 16,384 and with
42 classes the network has 9,705,418 trainable parameters, the notebook's
own count (a test holds it).
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS = (32, 64, 128, 256)
DROPOUTS = (0.25, 0.25, 0.4, 0.4)


def _block(cin: int, cout: int, p: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Dropout2d(p),
    )


class BART(nn.Module):
    """The notebook's four-block BatchNorm network.

    Args:
        num_classes: output logits (42 for the Simpsons set).
        image_size: input side, a multiple of 16 (128 in the notebook).
    """

    def __init__(self, num_classes: int = 42, image_size: int = 128) -> None:
        super().__init__()
        blocks, cin = [], 3
        for cout, p in zip(CHANNELS, DROPOUTS):
            blocks.append(_block(cin, cout, p))
            cin = cout
        self.features = nn.Sequential(*blocks)
        side = image_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(CHANNELS[-1] * side * side, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
