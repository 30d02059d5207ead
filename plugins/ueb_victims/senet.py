"""SENet-18 (Hu et al. 2018) in the CIFAR layout of kuangliu/pytorch-cifar, as APBench trains it.

A ResNet-18 of pre-activation blocks (BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3; a 1x1
projection on the pre-activated input when the shape changes) whose residual branch is
recalibrated by a squeeze-and-excitation unit before the addition: global average pool,
1x1 conv to channels / 16, ReLU, 1x1 conv back, sigmoid, channel-wise product. The stem is a
3x3 stride-1 conv with BN and ReLU at 32x32; above 64x64 inputs (stem="auto") it is the
ResNet's 7x7 stride-2 conv and max-pool. `width` is the first stage's channel count (64);
the stages use width x (1, 2, 4, 8). Initialisation: PyTorch's defaults, as in that code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ueb.interfaces import Victim
from ueb.nn import Classifier
from ueb.params import bounded
from ueb_victims._common import Stem, use_cifar_stem

BLOCKS = (2, 2, 2, 2)


class SEPreActBlock(nn.Module):
    """Pre-activation basic block whose residual branch passes a squeeze-and-excitation unit."""

    def __init__(self, cin: int, planes: int, stride: int, reduction: int) -> None:
        super().__init__()
        squeezed = max(1, planes // reduction)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.projection: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.projection = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)
        self.squeeze = nn.Conv2d(planes, squeezed, 1)
        self.excite = nn.Conv2d(squeezed, planes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        identity = self.projection(pre) if self.projection is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        weight = torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(out, 1)))))
        return out * weight + identity


class SENet18(Victim):
    """SENet-18: SE pre-activation blocks x (2, 2, 2, 2) with a CIFAR stem at 32x32."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"width": 8}, "quick": {"width": 16}}

    @dataclass(frozen=True)
    class Params:
        width: int = bounded(64, ge=1)  # channels of the first stage
        reduction: int = bounded(16, ge=1)  # squeeze ratio of the SE units
        stem: Stem = "auto"  # auto: CIFAR stem up to 64x64 inputs, the ResNet's above

    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> Classifier:
        p = self.params
        w = p.width
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
        ]
        if not use_cifar_stem(p.stem, image_size):
            layers[0] = nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False)
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        cin = w
        for stage, blocks in enumerate(BLOCKS):
            planes = w * 2**stage
            for j in range(blocks):
                stride = 2 if (stage and j == 0) else 1
                layers.append(SEPreActBlock(cin, planes, stride, p.reduction))
                cin = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return Classifier(nn.Sequential(*layers), cin, num_classes)
