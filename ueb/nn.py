"""The classifier shape every victim returns: backbone -> features -> linear head.

Inputs are [0, 1] images; the classifier rescales them to [-0.5, 0.5] itself (the paper's
protocol, following REM), so attacks and defences work in pixel units and never need to know
about normalisation. `features` gives penultimate features (linear probes, t-SNE, SimCLR).
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, shift: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.shift = shift

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.backbone(x - self.shift), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
