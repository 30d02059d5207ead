"""The offline backend: an approximation of SD+ControlNet that needs no weights.

What it keeps from the paper's generator is the contract that matters for Deep Hiding: the M
images of one class share one global shape (the class's canny edge map and the coarse
luminance layout of the same photo) and differ in low-level features (colours, textures,
grain, edge colour), all drawn from a per-(seed, class) generator. It does not synthesise new
content from the prompt: the prompt only chooses which shape a class gets. Every bank it
writes says so in its recipe (`backend = "offline"`, `generator` below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATOR_NAME = "offline approximation: canny shape of a real photo + seeded random textures (no diffusion)"


@dataclass(frozen=True)
class OfflineOptions:
    render_size: int = 128  # shapes are drawn at max(render_size, size), then area-resized
    levels: int = 4  # luminance regions of the source photo, each painted separately
    canny_low: int = 100
    canny_high: int = 200
    edge_strength: float = 0.85


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


def render_class(
    rgb: np.ndarray, edges: np.ndarray, count: int, size: int, seed: int, options: OfflineOptions, device: str = "cpu"
):
    """`count` images (uint8, (count, 3, size, size)) sharing the shape of `rgb`/`edges`.

    `rgb` and `edges` are at the render resolution. Each image paints every luminance region
    of the photo with its own colour modulated by its own smooth texture (random scale), adds
    fine grain, then draws the edge map in a sample-specific colour.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(int(seed))
    r = rgb.shape[0]
    regions = torch.from_numpy(_region_map(rgb, options.levels)).to(device)
    onehot = F.one_hot(regions, options.levels).permute(2, 0, 1).float()  # (L, r, r)
    edge = torch.from_numpy(edges.astype(np.float32) / 255.0).to(device)[None, None]
    out = torch.empty(count, 3, size, size, dtype=torch.uint8)
    chunk = 32
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        colours = _random_colours(gen, n, options.levels + 1).to(device)  # last one: edges
        img = torch.zeros(n, 3, r, r, device=device)
        for level in range(options.levels):
            res = int(torch.randint(3, 17, (1,), generator=gen))
            tex = _noise(gen, n, res, r, device)
            amp = (0.25 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)).to(device)
            shade = (1 - amp) + amp * tex  # (n, 1, r, r)
            img += onehot[level][None, None] * colours[:, level, :, None, None] * shade
        grain = (torch.rand(n, 1, 1, 1, generator=gen) * 0.08).to(device)
        img += grain * (torch.rand(n, 3, r, r, generator=gen).to(device) - 0.5)
        alpha = options.edge_strength * edge
        img = img * (1 - alpha) + alpha * colours[:, -1, :, None, None]
        img = F.interpolate(img.clamp(0, 1), size=(size, size), mode="area") if size != r else img
        out[start : start + n] = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return out
