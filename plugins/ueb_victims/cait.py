"""CaiT (Touvron et al. 2021, "Going deeper with Image Transformers"), small, for 32x32 inputs.

APBench trains `cait_small` from scratch on CIFAR: lucidrains/vit-pytorch's CaiT with
patch 4, width 512, 6 self-attention layers over the patch tokens, 2 class-attention layers
in which the class token (added only then) attends to itself and the patches, 6 heads of
64 dimensions, MLP 256, dropout 0.1 (attention, MLP and embedding) and layer dropout 0.05.
The blocks are pre-norm; every residual branch is multiplied by a learned per-channel
LayerScale initialised to 0.1 (the paper's value for depth <= 18, counted per position in a
stack); attention mixes its heads before and after the softmax (talking heads). The class
token leaves through a LayerNorm; the linear head is the Classifier's. Layer dropout skips
each layer of a stack with that probability per training step (never all of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from ueb.errors import ConfigError
from ueb.interfaces import Victim
from ueb.nn import Classifier
from ueb.params import bounded
from ueb_victims._common import CIFAR_STEM_MAX_SIZE


def layer_scale_init(position: int) -> float:
    """CaiT Sec. 2: 0.1 up to depth 18, 1e-5 up to 24, 1e-6 beyond (1-based position)."""
    if position <= 18:
        return 0.1
    return 1e-5 if position <= 24 else 1e-6


class TalkingHeadsAttention(nn.Module):
    """Multi-head attention of `x` over `x` followed by `context`, heads mixed around the softmax."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.mix_pre = nn.Parameter(torch.randn(heads, heads))
        self.mix_post = nn.Parameter(torch.randn(heads, heads))
        self.out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, H, N, D)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else torch.cat((x, context), dim=1)
        q = self._split(self.to_q(x))
        k, v = (self._split(t) for t in self.to_kv(source).chunk(2, dim=-1))
        scores = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        scores = torch.einsum("bhij,hg->bgij", scores, self.mix_pre)
        weights = torch.einsum("bhij,hg->bgij", scores.softmax(dim=-1), self.mix_post)
        out = torch.einsum("bhij,bhjd->bhid", weights, v)
        return self.out(out.transpose(1, 2).flatten(2))


class ScaledResidual(nn.Module):
    """x -> LayerScale(f(LayerNorm(x))): one pre-norm branch (the caller adds the residual)."""

    def __init__(self, dim: int, fn: nn.Module, position: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn
        self.scale = nn.Parameter(torch.full((1, 1, dim), layer_scale_init(position)))

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs) * self.scale


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )


class LayerStack(nn.Module):
    """`depth` (attention, MLP) layers with LayerScale, each skipped with `layer_dropout` in training."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float,
        layer_dropout: float,
    ) -> None:
        super().__init__()
        self.layer_dropout = layer_dropout
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    ScaledResidual(
                        dim, TalkingHeadsAttention(dim, heads, dim_head, dropout), i + 1
                    ),
                    ScaledResidual(dim, FeedForward(dim, mlp_dim, dropout), i + 1),
                ]
            )
            for i in range(depth)
        )

    def _kept(self) -> list[int]:
        if not self.training or self.layer_dropout == 0:
            return list(range(len(self.layers)))
        keep = torch.rand(len(self.layers)) >= self.layer_dropout
        if not bool(keep.any()):
            keep[int(torch.randint(len(self.layers), ()))] = True
        return [i for i in range(len(self.layers)) if keep[i]]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for i in self._kept():
            attention, mlp = cast(nn.ModuleList, self.layers[i])
            x = x + attention(x, context=context)
            x = x + mlp(x)
        return x


class CaiTBackbone(nn.Module):
    """Patch embedding + position embedding -> patch stack -> class-attention stack -> LayerNorm."""

    def __init__(self, p: CaiT.Params, image_size: int, in_channels: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(in_channels * patch * patch, p.dim)
        self.position = nn.Parameter(torch.randn(1, tokens, p.dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, p.dim))
        self.embed_dropout = nn.Dropout(p.emb_dropout)
        self.patch_layers = LayerStack(
            p.dim, p.depth, p.heads, p.dim_head, p.mlp_dim, p.dropout, p.layer_dropout
        )
        self.class_layers = LayerStack(
            p.dim, p.cls_depth, p.heads, p.dim_head, p.mlp_dim, p.dropout, p.layer_dropout
        )
        self.norm = nn.LayerNorm(p.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.patch
        patches = (
            x.reshape(b, c, h // s, s, w // s, s)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(b, (h // s) * (w // s), s * s * c)
        )
        tokens = self.embed_dropout(self.embed(patches) + self.position)
        tokens = self.patch_layers(tokens)
        cls = self.class_layers(self.cls_token.expand(b, -1, -1), context=tokens)
        return self.norm(cls[:, 0])


class CaiT(Victim):
    """CaiT-small as APBench trains it: patch 4, width 512, 6 + 2 layers, 6 heads x 64, MLP 256."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"dim": 32, "depth": 2, "cls_depth": 1, "heads": 2, "dim_head": 16, "mlp_dim": 32},
        "quick": {"dim": 96, "depth": 4, "cls_depth": 2, "heads": 3, "dim_head": 32, "mlp_dim": 96},
    }

    @dataclass(frozen=True)
    class Params:
        patch_size: int | None = bounded(None, ge=1)  # None: 4 up to 64x64 inputs, 16 above
        dim: int = bounded(512, ge=1)  # token width
        depth: int = bounded(6, ge=1)  # self-attention layers over the patches
        cls_depth: int = bounded(2, ge=1)  # class-attention layers
        heads: int = bounded(6, ge=1)
        dim_head: int = bounded(64, ge=1)
        mlp_dim: int = bounded(256, ge=1)
        dropout: float = bounded(0.1, ge=0, lt=1)
        emb_dropout: float = bounded(0.1, ge=0, lt=1)
        layer_dropout: float = bounded(0.05, ge=0, lt=1)

    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> Classifier:
        p = self.params
        patch = p.patch_size or (4 if image_size <= CIFAR_STEM_MAX_SIZE else 16)
        if image_size % patch:
            raise ConfigError(
                f"victim '{self.name}': image size {image_size} is not a multiple of patch_size {patch}",
                "choose a patch_size that divides it",
            )
        return Classifier(CaiTBackbone(p, image_size, in_channels, patch), p.dim, num_classes)
