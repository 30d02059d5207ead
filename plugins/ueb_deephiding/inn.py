"""The invertible hiding network: HiNet-style affine coupling blocks on Haar sub-bands.

Paper Sec. III-B1, eqs. 3-6, after HiNet (Jing et al., ICCV 2021). Block i maps the cover
sub-bands z_c and the hidden sub-bands z_h as

    z_c <- z_c + phi(z_h)                                    (eq. 3)
    z_h <- z_h * exp(alpha * rho(z_c)) + eta(z_c)            (eq. 4, with the new z_c)

and the reverse pass undoes the two steps in the opposite order (eqs. 5-6; the paper's
printed eqs. 5-6 swap the roles of the two branches, we invert eqs. 3-4 exactly). As in
HiNet, the exponent is bounded by a sigmoid clamp, exp(alpha * 2 * (sigmoid(s) - 0.5)), so
every scale lies in [exp(-alpha), exp(alpha)]: this is what keeps the inverse stable.

phi, rho and eta share one architecture, HiNet's 5-layer 3x3 dense block (growth 32,
LeakyReLU) whose last conv starts at zero, so a fresh network is the identity: the
unlearnable example equals the clean image until training teaches it to hide.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ueb_deephiding.wavelets import haar_dwt, haar_idwt


class DenseSubnet(nn.Module):
    """Five 3x3 convs, each seeing the input and all earlier outputs (dense connections)."""

    def __init__(self, cin: int, cout: int, growth: int = 32, layers: int = 5, slope: float = 0.01):
        super().__init__()
        if layers < 2:
            raise ValueError("a dense sub-network needs at least 2 layers")
        self.convs = nn.ModuleList(
            nn.Conv2d(cin + k * growth, growth, 3, padding=1) for k in range(layers - 1)
        )
        self.out = nn.Conv2d(cin + (layers - 1) * growth, cout, 3, padding=1)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, 1))))
        return self.out(torch.cat(feats, 1))


class CouplingBlock(nn.Module):
    """One affine coupling block (eqs. 3-4) and its exact inverse."""

    def __init__(self, channels: int, clamp: float, growth: int, layers: int):
        super().__init__()
        self.clamp = clamp
        self.phi = DenseSubnet(channels, channels, growth, layers)
        self.rho = DenseSubnet(channels, channels, growth, layers)
        self.eta = DenseSubnet(channels, channels, growth, layers)

    def scale(self, zc: torch.Tensor) -> torch.Tensor:
        # HiNet's clamp: alpha * rho squashed into (-alpha, alpha) through a sigmoid
        return torch.exp(self.clamp * 2.0 * (torch.sigmoid(self.rho(zc)) - 0.5))

    def forward(self, zc: torch.Tensor, zh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zc = zc + self.phi(zh)
        zh = zh * self.scale(zc) + self.eta(zc)
        return zc, zh

    def reverse(self, zc: torch.Tensor, zh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zh = (zh - self.eta(zc)) / self.scale(zc)
        zc = zc - self.phi(zh)
        return zc, zh


class HidingNetwork(nn.Module):
    """N coupling blocks between a Haar DWT and its inverse.

    `hide(x_c, x_h)` returns the container image (the unlearnable example, not yet clipped)
    and the lost-information branch z_h^N; `reveal(x_ue, r)` runs the blocks backwards from
    the container's sub-bands and a latent r (a fresh Gaussian in the paper) and returns
    (revealed clean image, revealed hidden image).
    """

    def __init__(
        self,
        blocks: int = 16,
        in_channels: int = 3,
        clamp: float = 2.0,
        growth: int = 32,
        layers: int = 5,
        init_scale: float = 0.01,
    ):
        super().__init__()
        self.in_channels = in_channels
        ch = 4 * in_channels
        self.blocks = nn.ModuleList(CouplingBlock(ch, clamp, growth, layers) for _ in range(blocks))
        self.reset_parameters(init_scale)

    @torch.no_grad()
    def reset_parameters(self, init_scale: float) -> None:
        """HiNet's initialisation: every weight and bias ~ init_scale * N(0, 1), last convs 0."""
        for name, param in self.named_parameters():
            if ".out." in name:
                param.zero_()
            else:
                param.normal_(0.0, init_scale)

    def forward_bands(
        self, zc: torch.Tensor, zh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            zc, zh = block(zc, zh)
        return zc, zh

    def reverse_bands(
        self, zc: torch.Tensor, zh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for block in reversed(cast(list[CouplingBlock], list(self.blocks))):
            zc, zh = block.reverse(zc, zh)
        return zc, zh

    def hide(self, clean: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zc, zh = self.forward_bands(_cl(haar_dwt(clean)), _cl(haar_dwt(hidden)))
        return haar_idwt(zc), zh

    def reveal(
        self,
        container: torch.Tensor,
        r: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        """(revealed clean, revealed hidden) from a container image and latent r (sub-band shaped)."""
        zc = _cl(haar_dwt(container))
        if r is None:
            r = torch.randn(zc.shape, generator=generator, device=zc.device, dtype=zc.dtype)
        zc0, r0 = self.reverse_bands(zc, _cl(r))
        return haar_idwt(zc0), haar_idwt(r0)

    def forward(self, clean: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.hide(clean, hidden)[0]


def _cl(z: torch.Tensor) -> torch.Tensor:
    # channels-last runs the small dense convs about 1.6x faster on CPU (oneDNN)
    return z.contiguous(memory_format=torch.channels_last)
