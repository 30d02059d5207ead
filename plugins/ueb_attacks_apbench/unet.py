"""The U-Net that Deep Confusion trains as its perturbation generator (the official CIFAR
model: four double-conv stages with average pooling, bilinear upsampling with skip
connections, a 1x1 conv with batch norm, then tanh)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNet(nn.Module):
    """Maps images to a perturbation direction in [-1, 1]; `width` is the first stage's channels
    (64 in the official model, doubled at each of the three downsamplings)."""

    levels = 3

    def __init__(self, channels: int, width: int = 64) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.down1 = _double_conv(channels, w[0])
        self.down2 = _double_conv(w[0], w[1])
        self.down3 = _double_conv(w[1], w[2])
        self.down4 = _double_conv(w[2], w[3])
        self.up3 = _double_conv(w[2] + w[3], w[2])
        self.up2 = _double_conv(w[1] + w[2], w[1])
        self.up1 = _double_conv(w[0] + w[1], w[0])
        self.last = nn.Sequential(nn.Conv2d(w[0], channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        unit = 2**self.levels  # pad to a multiple of 8 so the skips line up, crop after
        ph, pw = (-h) % unit, (-w) % unit
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        c1 = self.down1(x)
        c2 = self.down2(F.avg_pool2d(c1, 2))
        c3 = self.down3(F.avg_pool2d(c2, 2))
        z = self.down4(F.avg_pool2d(c3, 2))
        z = self.up3(torch.cat([_up(z), c3], 1))
        z = self.up2(torch.cat([_up(z), c2], 1))
        z = self.up1(torch.cat([_up(z), c1], 1))
        return torch.tanh(self.last(z))[..., :h, :w]


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
