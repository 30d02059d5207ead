"""The D-VAE network: a ResNet-18 stem, a rate-constrained VAE branch, a perturbation branch.

Architecture of the official `ResNetDVAE` (yuyi-sd/D-VAE, `configs/models/resnet.py`) at the
official setting `stem_end_block=7`: the stem is `conv1`/`bn1`, `layer1` and the first block
of `layer2` (128 channels at half resolution); the VAE maps it to a `latent_dim`-channel
Gaussian (1x1 convolutions), samples, maps back (`post_conv`) and decodes an image (sigmoid);
the perturbation decoder takes the sampled latent plus a learned class embedding of the same
shape (`--spatial_emb`, `--use_y` given: `Embedding + z`) and decodes an unbounded residual.
Module names follow the official ones so its `model_s*.pth` state dicts load; the classifier
branch (`layer2[1]`, `layer3`, `layer4`, `linear`) takes no part in any D-VAE loss and is left
out. `width` scales every channel count (64: the official network).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _decoder(
    width: int, out_channels: int, sigmoid: bool
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Three stages: 2w -> w (x2 upsampling) -> w/2 -> image, as the official decoder1..3."""
    first = nn.Sequential(
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
        nn.ConvTranspose2d(width, width, 3, stride=1, padding=1),
        nn.InstanceNorm2d(width),
        nn.ReLU(),
    )
    second = nn.Sequential(
        nn.ConvTranspose2d(width, width // 2, 3, stride=1, padding=1),
        nn.InstanceNorm2d(width // 2),
        nn.ReLU(),
    )
    last: list[nn.Module] = [nn.ConvTranspose2d(width // 2, out_channels, 3, stride=1, padding=1)]
    if sigmoid:
        last.append(nn.Sigmoid())
    return first, second, nn.Sequential(*last)


class DVAE(nn.Module):
    """forward(x, y, gen) -> (reconstruction, mu, log_var, perturbation)."""

    def __init__(
        self, num_classes: int, image_size: int, channels: int, width: int, latent_dim: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2))
        stem = 2 * width
        self.fc_mu = nn.Conv2d(stem, latent_dim, 1)
        self.fc_var = nn.Conv2d(stem, latent_dim, 1)
        self.post_conv = nn.Conv2d(latent_dim, stem, 1)
        self.decoder1, self.decoder2, self.decoder3 = _decoder(width, channels, sigmoid=True)
        self.decoder = nn.Sequential(self.decoder1, self.decoder2, self.decoder3)
        self.stem_shape = (stem, (image_size + 1) // 2, (image_size + 1) // 2)
        self.emb_p = nn.Embedding(num_classes, stem * self.stem_shape[1] * self.stem_shape[2])
        self.decoder_p1, self.decoder_p2, self.decoder_p3 = _decoder(width, channels, sigmoid=False)
        self.decoder_p = nn.Sequential(self.decoder_p1, self.decoder_p2, self.decoder_p3)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        stem = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        mu, log_var = self.fc_mu(stem), self.fc_var(stem)
        noise = torch.randn(mu.shape, generator=gen, device=gen.device).to(mu.device)
        z = self.post_conv(mu + noise * torch.exp(0.5 * log_var))
        rec = self.decoder(z)[..., :h, :w]
        embedding = self.emb_p(y).reshape(-1, *self.stem_shape)
        perturbation = self.decoder_p(embedding + z)[..., :h, :w]
        return rec, mu, log_var, perturbation


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent channels, averaged over images and positions."""
    return torch.mean(-0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1))
