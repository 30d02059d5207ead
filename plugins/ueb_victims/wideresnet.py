"""WideResNet-34-10 (Zagoruyko & Komodakis 2016), the adversarial-training standard.

The layout of the robustness code bases (TRADES, MART, AWP) for 32x32 inputs: a 3x3 conv to
16 channels, three groups of (depth - 4) / 6 pre-activation basic blocks with widths
16k, 32k, 64k (k = `widen_factor`) and strides 1, 2, 2, then BN, ReLU, global average pool.
A block's first BN-ReLU is shared with its 1x1 projection shortcut when the width changes.
Initialisation as in those code bases: convs N(0, sqrt(2 / (k*k*out))), BN weight 1 and
bias 0, linear bias 0. TRADES' file also builds an unused `sub_block1` that never enters the
forward pass; it is left out, so the model has 46.16 M parameters at 10 classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ueb.errors import ConfigError
from ueb.interfaces import Victim
from ueb.nn import Classifier
from ueb.params import bounded


class WideBasicBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> (dropout) -> conv3x3, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate)
        self.projection: nn.Module | None = None
        if cin != cout:
            self.projection = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        return out + (self.projection(pre) if self.projection is not None else x)


class WideResNet(Victim):
    """WRN-34-10: 3 groups of 5 pre-activation blocks, widths 160/320/640 (46.16 M parameters)."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"depth": 10, "widen_factor": 1},
        "quick": {"depth": 16, "widen_factor": 2},
    }

    @dataclass(frozen=True)
    class Params:
        depth: int = bounded(34, ge=10)  # 6n + 4 layers: n blocks per group
        widen_factor: int = bounded(10, ge=1)
        drop_rate: float = bounded(0.0, ge=0, lt=1)  # dropout between a block's convs

    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> Classifier:
        p = self.params
        if (p.depth - 4) % 6:
            raise ConfigError(
                f"victim '{self.name}': depth {p.depth} is not 6n + 4",
                "use 10, 16, 22, 28, 34, 40, ...",
            )
        n = (p.depth - 4) // 6
        widths = (16, 16 * p.widen_factor, 32 * p.widen_factor, 64 * p.widen_factor)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)]
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for j in range(n):
                layers.append(WideBasicBlock(cin, cout, stride if j == 0 else 1, p.drop_rate))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        backbone = nn.Sequential(*layers)
        model = Classifier(backbone, cin, num_classes)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        return model
