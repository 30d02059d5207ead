"""LSP: linear separable synthetic perturbations (Yu et al., KDD 2022, "Availability Attacks
Create Shortcuts").

Follows dayu11/Availability-Attacks-Create-Shortcuts (synthetic_perturbations/cifar_train.py):
`sklearn.datasets.make_classification` draws one point per training image from a Gaussian
mixture with one cluster per class (all features informative, class_sep 10, no label noise);
each point's (grid x grid x C) features are blown up to constant patch x patch squares (8 x 8
on 32 x 32 images: 48 features), cropped to the image, and scaled to the L2 norm
sqrt(C*H*W) * 6/255 (1.304 on 3 x 32 x 32). Image i of class k gets the i-th point drawn for
class k, so the noise differs within a class (sample-wise) while the classes stay linearly
separable. No surrogate.

`class_wise=True` gives every image of a class the class's first point instead (a class-wise
variant; not the official setting). `norm=1.0` is the L2 budget the Deep Hiding paper's table
lists for LSP. `patch_rule="apbench"` uses APBench's 32-pixel patches on 224 x 224 images.
Sources and the generalisation to other image sizes: docs/poisoners-surrogate-free.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext
from ueb.params import bounded

_CHUNK = 2048  # images per chunk when expanding points to full-size noise


def lsp_norm(norm: float | None, eps: float, shape: tuple[int, int, int]) -> float:
    """The L2 norm of every noise: `norm`, or the official sqrt(C*H*W) * eps."""
    if norm is not None:
        return float(norm)
    return math.sqrt(shape[0] * shape[1] * shape[2]) * eps


def lsp_patch(patch_size: int | None, rule: str, size: int) -> int:
    """Patch side in pixels. Official: 8 on 32 x 32, i.e. a 4 x 4 grid; other sizes keep the grid."""
    if patch_size is not None:
        return patch_size
    if rule == "apbench":
        return 32 if size > 32 else 8  # APBench: 32 for its 224 x 224 ImageNet-100, else 8
    return max(1, math.ceil(size / 4))


def expand_points(
    points: np.ndarray, channels: int, height: int, width: int, patch: int, norm: float
) -> torch.Tensor:
    """(n, gh*gw*C) feature vectors -> (n, C, H, W) patch noise, each scaled to L2 `norm`.

    Features are laid out (row, col, channel) as in the official reshape to (n, gh, gw, 3).
    """
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    x = torch.from_numpy(points.astype(np.float32)).view(-1, gh, gw, channels).permute(0, 3, 1, 2)
    x = x.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)[:, :, :height, :width]
    flat = x.reshape(len(x), -1)
    norms = flat.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):  # make_classification never gives an all-zero point
        raise ConfigError("LSP drew an all-zero synthetic point", "use another seed")
    return (flat / norms * norm).view_as(x).contiguous()


class LinearSeparablePerturbations(Poisoner["LinearSeparablePerturbations.Params"]):
    """Patch-wise noise from a per-class Gaussian cluster, L2 sqrt(C*H*W) * 6/255 by default."""

    version = "1"
    # Paper: Sec. IV-A4, "AR and LSP use L2 = 1" (the official norm would be
    # sqrt(3 * 32 * 32) * 6/255 = 1.304).
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {"norm": 1.0}}

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(6 / 255, gt=0, le=1)  # official --eps 6: the norm is sqrt(C*H*W) * eps
        norm: float | None = bounded(
            None, gt=0
        )  # a fixed L2 norm instead (the paper's table lists 1.0)
        patch_size: int | None = bounded(None, ge=1)  # None: by patch_rule
        patch_rule: Literal["official", "apbench"] = "official"
        class_sep: float = bounded(10.0, gt=0)
        class_wise: bool = False  # official: one point per image (sample-wise)

        def __post_init__(self) -> None:
            if self.norm is not None and self.norm <= 0:
                raise ValueError("norm must be positive")
            if self.eps <= 0:
                raise ValueError("eps must be positive")
            if self.patch_size is not None and self.patch_size < 1:
                raise ValueError("patch_size must be at least 1")

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}
        self._shape: tuple[int, int, int] = (3, 32, 32)  # until poison() sees the data

    def budget(self) -> Budget:
        return Budget("l2", lsp_norm(self.params.norm, self.params.eps, self._shape))

    @property
    def sample_wise(self) -> bool:
        return not self.params.class_wise

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def draw_points(self, counts: list[int], features: int, seed: int) -> list[np.ndarray]:
        """Each class's points, (counts[k], features), in the order make_classification drew them."""
        from sklearn.datasets import make_classification

        k = len(counts)
        per_class = max(1, max(counts))
        points, labels = make_classification(
            n_samples=per_class * k,  # = N on a balanced set, as the official call
            n_features=features,
            n_informative=features,
            n_redundant=0,
            n_repeated=0,
            n_classes=k,
            n_clusters_per_class=1,
            class_sep=self.params.class_sep,
            flip_y=0.0,
            random_state=seed,
        )
        out = []
        for c in range(k):
            mine = points[labels == c]
            out.append(
                mine[:1].repeat(counts[c], axis=0) if self.params.class_wise else mine[: counts[c]]
            )
        return out

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        p = self.params
        _, c, h, w = train.images.shape
        self._shape = (c, h, w)
        patch = lsp_patch(p.patch_size, p.patch_rule, max(h, w))
        gh, gw = math.ceil(h / patch), math.ceil(w / patch)
        features = gh * gw * c
        k = train.num_classes
        if k > 2**features:
            raise ConfigError(
                f"LSP with {patch}-pixel patches has {features} features, too few for {k} classes",
                "use a smaller patch_size",
            )
        norm = lsp_norm(p.norm, p.eps, self._shape)
        labels = train.labels.cpu()
        counts = torch.bincount(labels, minlength=k).tolist()
        points = self.draw_points(counts, features, ctx.seed)
        out = train.uint8().cpu().float().div_(255.0)
        with ctx.progress.task("LSP noise", total=k) as task:
            for cls in range(k):
                idx = torch.nonzero(labels == cls).flatten()
                for i in range(0, len(idx), _CHUNK):
                    part = idx[i : i + _CHUNK]
                    noise = expand_points(points[cls][i : i + _CHUNK], c, h, w, patch, norm)
                    out[part] = (out[part] + noise).clamp_(0, 1)
                task.advance()
        self.facts = {
            "lsp_l2": norm,
            "lsp_patch_size": patch,
            "lsp_grid": [gh, gw],
            "lsp_features": features,
            "lsp_class_sep": p.class_sep,
        }
        return out
