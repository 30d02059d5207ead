"""What the contrastive poisoners (UCL, TUE) share: differentiable SimCLR views, the SimCLR
loss, and an encoder (the surrogate victim's backbone plus a projection head).

The views are kornia augmentations applied with gradients, so a perturbation can be optimised
through them (contrastive poisoning does exactly this). Their random parameters come from a
generator the caller seeds (`global_rng_from`), so a run repeats from its seed.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from ueb_countermeasures_modern._rng import global_rng_from
from ueb_countermeasures_modern.simclr import ProjectionHead, nt_xent

from ueb.nn import Classifier


class SimCLRViews:
    """Random resized crop, flip, colour jitter (p 0.8) and grayscale (p 0.2), with gradients."""

    def __init__(
        self,
        size: int,
        crop_scale: tuple[float, float],
        jitter: tuple[float, float, float, float],
        jitter_p: float,
        grayscale_p: float,
    ) -> None:
        import kornia.augmentation as K

        self.policy = K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=crop_scale),
            K.RandomHorizontalFlip(),
            K.ColorJitter(*jitter, p=jitter_p),
            K.RandomGrayscale(p=grayscale_p),
        )

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One view of a [0, 1] batch; grey images go through as RGB and come back grey."""
        grey = x.shape[1] == 1
        xin = x.expand(-1, 3, -1, -1) if grey else x
        with global_rng_from(gen):
            out = self.policy(xin)
        return out.mean(1, keepdim=True) if grey else out


def simclr_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, scale: float
) -> torch.Tensor:
    """NT-Xent over the 2B views, times `scale` (the official SupCon-style loss multiplies by
    temperature / base_temperature)."""
    return scale * nt_xent(z1, z2, temperature)


class Encoder(nn.Module):
    """A victim's feature extractor with a SimCLR projection head on top."""

    def __init__(self, classifier: nn.Module, projection_dim: int) -> None:
        super().__init__()
        self.classifier = cast(Classifier, classifier)  # what every victim's build() returns
        self.head = ProjectionHead(self.classifier.feature_dim, projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier.features(x))

    def trainable(self) -> list[nn.Parameter]:
        """Backbone and projection head; the classifier's linear head takes no part."""
        backbone = [q for n, q in self.classifier.named_parameters() if not n.startswith("head.")]
        return backbone + list(self.head.parameters())


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for q in module.parameters():
        q.requires_grad_(flag)
