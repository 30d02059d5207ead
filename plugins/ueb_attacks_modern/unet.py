"""The perturbation generator of GUE: a four-level U-Net ending in BatchNorm and tanh.

Layout of hong-xian/gue (models/unet.py): double 3x3 conv-BN-ReLU blocks at widths w, 2w, 4w,
8w with 2x2 average pooling between them, bilinear upsampling (align_corners) with skip
concatenation on the way up, a 1x1 conv plus BatchNorm to the image's channels, then tanh, so
the output lies in (-1, 1) and `eps * output` in the Linf ball. Upsampling goes to the skip's
size, so any image side works (the official scale factor 2 assumes a side divisible by 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PerturbationUNet(nn.Module):
    def __init__(self, channels: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.down1 = _double_conv(channels, w)
        self.down2 = _double_conv(w, 2 * w)
        self.down3 = _double_conv(2 * w, 4 * w)
        self.down4 = _double_conv(4 * w, 8 * w)
        self.pool = nn.AvgPool2d(2)
        self.up3 = _double_conv(4 * w + 8 * w, 4 * w)
        self.up2 = _double_conv(2 * w + 4 * w, 2 * w)
        self.up1 = _double_conv(w + 2 * w, w)
        self.last = nn.Sequential(nn.Conv2d(w, channels, 1), nn.BatchNorm2d(channels))

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.down1(x)
        c2 = self.down2(self.pool(c1))
        c3 = self.down3(self.pool(c2))
        bottom = self.down4(self.pool(c3))
        u = self.up3(torch.cat([self._up(bottom, c3), c3], 1))
        u = self.up2(torch.cat([self._up(u, c2), c2], 1))
        u = self.up1(torch.cat([self._up(u, c1), c1], 1))
        return torch.tanh(self.last(u))
