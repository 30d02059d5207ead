"""MobileNetV2 (Sandler et al. 2018) in the CIFAR layout of kuangliu/pytorch-cifar.

That layout is what APBench and the unlearnable-examples code bases train: inverted residual
blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection), the paper's stage table
(expansion, channels, blocks, stride), a stride-1 first conv and stride 1 in the second stage
(the paper's stride 2 in both would leave a 1x1 map at 32x32), ReLU activations, a 1x1
projection shortcut when a stride-1 block changes its width, a 1x1 conv to 1280 channels and
a global average pool. Above 64x64 inputs (stem="auto") the paper's strides come back.
`width_mult` scales every channel count (rounded to a multiple of 8, as the paper's code
does) for narrow CPU victims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ueb.interfaces import Victim
from ueb.nn import Classifier
from ueb.params import bounded
from ueb_victims._common import Stem, use_cifar_stem

# (expansion t, output channels c, blocks n, stride s): the paper's Table 2.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def scaled(channels: int, mult: float) -> int:
    """`channels * mult` rounded to a multiple of 8 (never below 8 nor 10% under the target)."""
    target = channels * mult
    rounded = max(8, int(target + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * target else rounded


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; residual at stride 1."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * cin
        self.expand = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.stride = stride
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(Victim):
    """MobileNetV2, kuangliu/pytorch-cifar layout at 32x32 (2.30 M parameters at 10 classes)."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"width_mult": 0.25},
        "quick": {"width_mult": 0.35},
    }

    @dataclass(frozen=True)
    class Params:
        width_mult: float = bounded(1.0, gt=0, le=4)  # the paper's width multiplier
        stem: Stem = "auto"  # auto: CIFAR strides up to 64x64 inputs, the paper's above

    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> Classifier:
        p = self.params
        cifar = use_cifar_stem(p.stem, image_size)
        cin = scaled(STEM_CHANNELS, p.width_mult)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, cin, 3, stride=1 if cifar else 2, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(),
        ]
        for i, (t, c, n, s) in enumerate(STAGES):
            cout = scaled(c, p.width_mult)
            first_stride = 1 if (cifar and i == 1) else s
            for j in range(n):
                layers.append(InvertedResidual(cin, cout, t, first_stride if j == 0 else 1))
                cin = cout
        last = scaled(LAST_CHANNELS, max(1.0, p.width_mult))  # the paper keeps 1280 below 1.0
        layers += [
            nn.Conv2d(cin, last, 1, bias=False),
            nn.BatchNorm2d(last),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        return Classifier(nn.Sequential(*layers), last, num_classes)
