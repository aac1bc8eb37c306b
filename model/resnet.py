"""ResNetS, a compact residual network for small images (an extra ``--model``).

Not one of the reference notebooks' networks: the modern shape they lack,
residual blocks, BatchNorm after every conv and global average pooling
into one linear layer, sized so that one 2-core CPU trains it on the real
images at 64 px within the time budget of BENCHMARKS.md:

    stem   conv3x3 3-w0, BN, ReLU                          (s x s)
    stage  2x2 max-pool, conv3x3 w(i-1)-w(i), BN, ReLU,    (s/2, s/4, s/8)
           residual block (conv3x3, BN, ReLU, conv3x3, BN) + skip, ReLU
    head   global average pool, dropout, linear w3-classes

Pooling comes first in each stage, so the widening conv runs at the lower
resolution (a third of the multiply-adds of pooling after it). With the
default widths 32-64-128-256 it has 1.9 M parameters at 27 classes, at any
input size (the head sees a pooled vector, so 64 and 128 px share weights).
The default recipe trains it narrower, 32-48-96-192 (1.1 M parameters,
faster steps on a CPU; benchmarks/history/training.md "A narrower network,
longer").
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (32, 64, 128, 256)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv(width, width), nn.ReLU(inplace=True), *_conv(width, width))
        nn.init.zeros_(self.body[-1].weight)  # each block starts as the identity (stable early steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResNetS(nn.Module):
    """Stem, three pool-conv-residual stages, global average pool, linear.

    Args:
        num_classes: output logits.
        image_size: input side in pixels, a multiple of 16 (any works; 64 is the tuned one).
        widths: channels of the stem and the three stages (four numbers).
        dropout: before the linear head.
    """

    def __init__(self, num_classes: int = 42, image_size: int = 64, widths: tuple = WIDTHS,
                 dropout: float = 0.1) -> None:
        super().__init__()
        w0, *rest = widths
        layers: list[nn.Module] = [*_conv(3, w0), nn.ReLU(inplace=True)]
        cin = w0
        for w in rest:
            layers += [nn.MaxPool2d(2), *_conv(cin, w), nn.ReLU(inplace=True), _Residual(w)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
