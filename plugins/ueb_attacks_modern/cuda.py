"""CUDA: Convolution-based Unlearnable DAtaset (Sadasivan, Soltanolkotabi, Feizi, CVPR 2023).

Model-free: every class k gets a random k x k filter (entries uniform in [0, blur_parameter],
one random entry set to `center_parameter`); each image of class k is convolved with it
(depthwise, zero padding, no bias), divided by its own maximum and clipped, following
vinusankars/Convolution-based-Unlearnability (final_filter_unlearnable.py,
`get_filter_unlearnable`). The filters are drawn with NumPy's legacy generator seeded by the run
seed in the official order, so seed s gives the official code's filters for `--seed s`.

The filter is class-wise; the change it makes is not: x' - x depends on the image, so the
poison declares `sample_wise = True` (an additive class pattern pasted onto other images, which
the shortcut probe does, is not what CUDA does) and `Budget("unbounded")` (the paper bounds no
norm). Settings and sources: docs/poisoners-modern.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext
from ueb.params import bounded


def draw_filters(
    num_classes: int,
    channels: int,
    kernel_size: int,
    blur_parameter: float,
    center_parameter: float,
    independent_channels: bool,
    seed: int,
) -> torch.Tensor:
    """Class-wise depthwise filters, (num_classes, channels, 1, k, k), in the official draw order.

    Per class: a (3, 1, k, k) uniform block, then one entry of channel 0's kernel set to
    `center_parameter`; channels 1.. copy channel 0 unless `independent_channels`, which gives
    every channel its own kernel and its own centre (drawn after the block, channel by channel).
    """
    rng = np.random.RandomState(seed)
    k = kernel_size
    out = np.zeros((num_classes, channels, 1, k, k), dtype=np.float64)
    for c in range(num_classes):
        w = rng.uniform(low=0, high=blur_parameter, size=(max(3, channels), 1, k, k))
        owned = range(channels) if independent_channels else range(1)
        for ch in owned:
            w[ch, 0, rng.randint(k), rng.randint(k)] = center_parameter
        if not independent_channels:
            w[1:] = w[0]
        out[c] = w[:channels]
    return torch.from_numpy(out).float()


def convolve_classwise(
    x: torch.Tensor, labels: torch.Tensor, filters: torch.Tensor
) -> torch.Tensor:
    """Each image convolved with its class's filter (zero padding, same size), as float."""
    channels, k = x.shape[1], filters.shape[-1]
    out = torch.empty_like(x)
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        out[idx] = F.conv2d(x[idx], filters[c].to(x), padding=k // 2, groups=channels)
    return out


def normalise_by_max(x: torch.Tensor) -> torch.Tensor:
    """Divide every image by its own maximum (an all-black image stays black)."""
    peak = x.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    return x / peak


class ConvolutionBasedUnlearnable(Poisoner):
    """CUDA: class-wise random blur filters, unbounded, no surrogate."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        blur_parameter: float = bounded(0.3, gt=0, le=10)
        center_parameter: float = bounded(1.0, gt=0, le=10)
        kernel_size: int = bounded(3, ge=1, le=31)
        channel_filters: Literal["shared", "independent"] = "shared"
        grayscale: bool = False

        def __post_init__(self) -> None:
            if self.kernel_size % 2 == 0:
                raise ValueError(
                    f"kernel_size must be odd (same-size output), got {self.kernel_size}"
                )

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("unbounded")

    @property
    def sample_wise(self) -> bool:
        return True  # one filter per class, but x' - x differs from image to image

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        if train.num_classes < 2:
            raise ConfigError(
                "CUDA needs at least two classes", "use a dataset with several classes"
            )
        p = self.params
        filters = draw_filters(
            train.num_classes,
            train.channels,
            p.kernel_size,
            p.blur_parameter,
            p.center_parameter,
            p.channel_filters == "independent",
            ctx.seed,
        )
        x = train.float01().float()
        y = normalise_by_max(convolve_classwise(x, train.labels, filters))
        if p.grayscale:
            y = y.mean(1, keepdim=True).expand_as(y)
        # The official code stores float * 255 with astype(uint8): truncation, not rounding.
        out = (y.clamp(0, 1) * 255).floor().to(torch.uint8)
        self.facts = {
            "filters": [[round(v, 6) for v in f.tolist()] for f in filters.flatten(1)],
            "psnr_db": _psnr(train.uint8(), out),
        }
        return out


def _psnr(clean: torch.Tensor, poisoned: torch.Tensor) -> float | None:
    mse = float((clean.float() - poisoned.float()).pow(2).mean())
    return None if mse == 0 else round(10 * float(np.log10(255.0**2 / mse)), 3)
