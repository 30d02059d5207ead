"""The offline backend: an approximation of SD+ControlNet that needs no weights.

What it keeps from the paper's generator is the contract that matters for Deep Hiding: the M
images of one class share one global shape and differ in local features. The shape is the
class photo's coarse luminance layout (its blurred grey image: where the image is bright and
where dark, which is what a signed perturbation carries) and its canny edge map; each sample
tints the photo's luminance regions with its own colours (luminance kept), modulates them
with its own smooth texture and grain, and draws the edges in its own colour, all from a
per-(seed, class) generator. It does not synthesise content from the prompt: the prompt only
chooses which shape a class gets. Every bank it writes says so in its recipe (`backend =
"offline"`, `generator` below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ueb.params import bounded

GENERATOR_NAME = "offline approximation: luminance layout and canny edges of a real photo + seeded random colours and textures (no diffusion)"


@dataclass(frozen=True)
class OfflineOptions:
    render_size: int = bounded(128, ge=8)  # drawn at max(render_size, size), then area-resized
    levels: int = bounded(4, ge=1)  # luminance regions of the source photo, each tinted apart
    canny_low: int = bounded(100, ge=0, le=255)
    canny_high: int = bounded(200, ge=0, le=255)
    edge_strength: float = bounded(0.5, ge=0, le=1)
    layout_blur: float = bounded(2.0, ge=0)  # sigma (render pixels) of the shared luminance layout
    texture_strength: float = bounded(0.3, ge=0, le=1)  # largest depth of a sample's texture


def _region_map(rgb: np.ndarray, levels: int) -> np.ndarray:
    """Coarse luminance layout of the photo: each pixel's quantile band (0..levels-1)."""
    import cv2

    gray = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 1.5).astype(np.float64)
    qs = np.quantile(gray, np.linspace(0, 1, levels + 1)[1:-1])
    return np.searchsorted(qs, gray, side="right").astype(np.int64)


def _noise(gen, n: int, res: int, out: int, device: str):
    """Smooth random fields (n, 1, out, out) in [0, 1] from a res x res grid."""
    import torch
    import torch.nn.functional as F

    base = torch.rand(n, 1, res, res, generator=gen).to(device)
    field = F.interpolate(base, size=(out, out), mode="bicubic", align_corners=False)
    lo = field.amin(dim=(2, 3), keepdim=True)
    hi = field.amax(dim=(2, 3), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-6)


def _random_colours(gen, n: int, k: int):
    """n x k random RGB colours from HSV with moderate-to-high saturation."""
    import torch

    h = torch.rand(n, k, generator=gen) * 6.0
    s = 0.35 + 0.65 * torch.rand(n, k, generator=gen)
    v = 0.3 + 0.7 * torch.rand(n, k, generator=gen)
    i = h.floor()
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], -1).gather(-1, i[..., None])[..., 0]
    g = torch.stack([t, v, v, q, p, p], -1).gather(-1, i[..., None])[..., 0]
    b = torch.stack([p, p, t, v, v, q], -1).gather(-1, i[..., None])[..., 0]
    return torch.stack([r, g, b], -1)  # (n, k, 3)


def _layout(rgb: np.ndarray, blur: float) -> np.ndarray:
    """The photo's coarse luminance (grey, blurred) stretched to [0.1, 0.9]: the shared shape."""
    import cv2

    gray: np.ndarray[Any, Any] = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255.0
    if blur > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur)
    lo, hi = np.quantile(gray, [0.01, 0.99])
    return 0.1 + 0.8 * np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)


LUMA = (0.299, 0.587, 0.114)


def render_class(
    rgb: np.ndarray,
    edges: np.ndarray,
    count: int,
    size: int,
    seed: int,
    options: OfflineOptions,
    device: str = "cpu",
):
    """`count` images (uint8, (count, 3, size, size)) sharing the shape of `rgb`/`edges`.

    `rgb` and `edges` are at the render resolution. Each image gives every luminance region
    of the photo its own colour at the photo's own luminance (so bright stays bright), shades
    it with its own smooth texture (random scale and depth), adds fine grain, then draws the
    edge map in a sample-specific colour.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(int(seed))
    r = rgb.shape[0]
    regions = torch.from_numpy(_region_map(rgb, options.levels)).to(device)
    onehot = F.one_hot(regions, options.levels).permute(2, 0, 1).float()  # (L, r, r)
    layout = torch.from_numpy(_layout(rgb, options.layout_blur)).float().to(device)[None, None]
    edge = torch.from_numpy(edges.astype(np.float32) / 255.0).to(device)[None, None]
    luma = torch.tensor(LUMA, device=device)
    out = torch.empty(count, 3, size, size, dtype=torch.uint8)
    chunk = 32
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        colours = _random_colours(gen, n, options.levels + 1).to(device)  # last one: edges
        # each colour scaled to unit luminance: the tint changes hue, not brightness
        tints = colours / (colours @ luma).clamp_min(0.05)[..., None]
        tint = torch.einsum("nlc,lhw->nchw", tints[:, : options.levels], onehot)
        shade = torch.ones(n, 1, r, r, device=device)
        for _ in range(2):  # two texture scales per sample
            res = int(torch.randint(3, 17, (1,), generator=gen))
            tex = _noise(gen, n, res, r, device)
            depth = (options.texture_strength * torch.rand(n, 1, 1, 1, generator=gen)).to(device)
            shade = shade * (1 - depth * (tex - 0.5))
        img = layout * tint * shade
        grain = (torch.rand(n, 1, 1, 1, generator=gen) * 0.08).to(device)
        img += grain * (torch.rand(n, 3, r, r, generator=gen).to(device) - 0.5)
        alpha = options.edge_strength * edge
        img = img * (1 - alpha) + alpha * colours[:, -1, :, None, None]
        img = F.interpolate(img.clamp(0, 1), size=(size, size), mode="area") if size != r else img
        out[start : start + n] = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return out
