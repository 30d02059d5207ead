"""Vision Transformer (Dosovitskiy et al. 2021) sized for 32x32, on torchvision's definition.

The paper trains "ViT" without giving its size. Our default is the configuration most CIFAR
code trains from scratch (e.g. kentaroy47/vision-transformers-cifar10): patch 4 (64 tokens at
32x32), depth 6, width 512, 8 heads, MLP 512, dropout 0.1. torchvision's VisionTransformer
(class token, learned position embedding, pre-norm blocks) is used as is; its head becomes
the Classifier's. At 224x224 the patch defaults to 16 (ViT-B/16's tokenisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ueb.interfaces import Victim
from ueb.params import bounded
from ueb_victims._common import CIFAR_STEM_MAX_SIZE, check_positive


class ViT(Victim["ViT.Params"]):
    """ViT with patch 4, depth 6, width 512, 8 heads, MLP 512 at 32x32 (all parameters)."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"depth": 2, "width": 32, "heads": 4, "mlp_dim": 64},
        "quick": {"depth": 4, "width": 64, "heads": 4, "mlp_dim": 128},
    }

    @dataclass(frozen=True)
    class Params:
        patch_size: int | None = bounded(None, ge=1)  # None: 4 up to 64x64 inputs, 16 above
        depth: int = bounded(6, ge=1)
        width: int = bounded(512, ge=1)  # token dimension (hidden_dim)
        heads: int = bounded(8, ge=1)
        mlp_dim: int = bounded(512, ge=1)
        dropout: float = bounded(0.1, ge=0, le=1)
        attention_dropout: float = bounded(0.0, ge=0, le=1)

    def build(self, num_classes: int, image_size: int, in_channels: int = 3):
        from torch import nn
        from torchvision.models.vision_transformer import VisionTransformer

        from ueb.errors import ConfigError
        from ueb.nn import Classifier

        p = self.params
        owner = f"victim '{self.name}'"
        patch = p.patch_size or (4 if image_size <= CIFAR_STEM_MAX_SIZE else 16)
        check_positive(
            owner, patch_size=patch, depth=p.depth, width=p.width, heads=p.heads, mlp_dim=p.mlp_dim
        )
        if image_size % patch:
            raise ConfigError(
                f"{owner}: image size {image_size} is not a multiple of patch_size {patch}",
                "choose a patch_size that divides it",
            )
        if p.width % p.heads:
            raise ConfigError(
                f"{owner}: width {p.width} is not a multiple of heads {p.heads}",
                "choose heads that divide width",
            )
        net = VisionTransformer(
            image_size=image_size,
            patch_size=patch,
            num_layers=p.depth,
            num_heads=p.heads,
            hidden_dim=p.width,
            mlp_dim=p.mlp_dim,
            dropout=p.dropout,
            attention_dropout=p.attention_dropout,
        )
        if in_channels != 3:
            net.conv_proj = nn.Conv2d(in_channels, p.width, patch, stride=patch)
            nn.init.trunc_normal_(
                net.conv_proj.weight, std=(1.0 / (in_channels * patch * patch)) ** 0.5
            )
            nn.init.zeros_(net.conv_proj.bias)
        net.heads = nn.Identity()  # forward then returns the class token's features
        return Classifier(net, p.width, num_classes)
