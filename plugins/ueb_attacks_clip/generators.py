"""The two perturbation generators: ResNet encoder-decoders in the style of image-to-image
translation networks (reflection padding, a 7x7 stem, stride-2 convolutions down, residual
blocks, transposed convolutions up, tanh out), as the official UC and 14A code build them.

`NoiseGenerator` (UC) maps a fixed random image to one perturbation; `ConceptGenerator` (14A)
maps an image and its CLIP embedding, tiled over the bottleneck, to that image's perturbation.
Both work at any input side: it is padded up to a multiple of 2**downsampling and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _down(in_channels: int, ngf: int, levels: int) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, 7, bias=False),
        nn.BatchNorm2d(ngf),
        nn.ReLU(True),
    ]
    for i in range(levels):
        w = ngf * 2**i
        layers += [
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(True),
        ]
    return layers


def _up(ngf: int, levels: int, out_channels: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(levels):
        w = ngf * 2 ** (levels - i)
        layers += [
            nn.ConvTranspose2d(w, w // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(w // 2),
            nn.ReLU(True),
        ]
    return layers + [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]


def _padded(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


class NoiseGenerator(nn.Module):
    """UC's generator: 2 downsamplings, `blocks` residual blocks, output in [-1, 1]."""

    levels = 2

    def __init__(self, channels: int = 3, ngf: int = 64, blocks: int = 6) -> None:
        super().__init__()
        width = ngf * 2**self.levels
        self.net = nn.Sequential(
            *_down(channels, ngf, self.levels),
            *[ResidualBlock(width) for _ in range(blocks)],
            *_up(ngf, self.levels, channels),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        padded, h, w = _padded(z, 2**self.levels)
        return self.net(padded)[..., :h, :w]


class ConceptGenerator(nn.Module):
    """14A's generator: 3 downsamplings; the image embedding is tiled over the bottleneck,
    concatenated to it and squeezed back by a 3x3 convolution before `blocks` residual blocks."""

    levels = 3

    def __init__(self, embed_dim: int, channels: int = 3, ngf: int = 64, blocks: int = 24) -> None:
        super().__init__()
        width = ngf * 2**self.levels
        self.encoder = nn.Sequential(*_down(channels, ngf, self.levels))
        self.squeeze = nn.Sequential(
            nn.Conv2d(width + embed_dim, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(True)
        )
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.decoder = nn.Sequential(*_up(ngf, self.levels, channels))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        padded, h, w = _padded(x, 2**self.levels)
        code = self.encoder(padded)
        tiled = embedding[:, :, None, None].expand(-1, -1, *code.shape[-2:])
        code = self.blocks(self.squeeze(torch.cat([code, tiled], dim=1)))
        return self.decoder(code)[..., :h, :w]
