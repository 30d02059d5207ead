"""One-level 2-D Haar wavelet transform in torch, with pywavelets' scaling and signs.

`haar_dwt` maps (B, C, H, W) to (B, 4C, H/2, W/2) laid out band-major: channels
[0, C) hold the approximation LL, then pywavelets' horizontal (cH), vertical (cV) and
diagonal (cD) details, each C channels. For every channel this equals
`pywt.dwt2(x, "haar")` (orthonormal filters, so a 2x2 block is scaled by 1/2 and the
transform preserves energy); `haar_idwt` is its exact inverse. HiNet (Jing et al. 2021)
uses the same orthonormal scaling with another sign convention for the details, which an
INN does not care about; matching the reference library makes the transform testable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BANDS = ("LL", "H", "V", "D")


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with even H, W -> (B, 4C, H/2, W/2): [LL | H | V | D]."""
    if x.ndim != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"haar_dwt needs (B, C, H, W) with even H and W, got {tuple(x.shape)}")
    a = x[..., 0::2, 0::2]  # top-left of each 2x2 block
    b = x[..., 0::2, 1::2]  # top-right
    c = x[..., 1::2, 0::2]  # bottom-left
    d = x[..., 1::2, 1::2]  # bottom-right
    ll = (a + b + c + d) * 0.5
    h = (a + b - c - d) * 0.5  # top minus bottom (pywt cH)
    v = (a - b + c - d) * 0.5  # left minus right (pywt cV)
    dd = (a - b - c + d) * 0.5  # pywt cD
    return torch.cat((ll, h, v, dd), dim=1)


def haar_idwt(z: torch.Tensor) -> torch.Tensor:
    """Inverse of `haar_dwt`: (B, 4C, h, w) -> (B, C, 2h, 2w)."""
    if z.ndim != 4 or z.shape[1] % 4:
        raise ValueError(f"haar_idwt needs (B, 4C, h, w), got {tuple(z.shape)}")
    ll, h, v, d = z.chunk(4, dim=1)
    a = (ll + h + v + d) * 0.5
    b = (ll + h - v - d) * 0.5
    c = (ll - h + v - d) * 0.5
    dd = (ll - h - v + d) * 0.5
    # pixel_shuffle puts channel 4k + 2i + j at offset (i, j) of output block k
    blocks = torch.stack((a, b, c, dd), dim=2).flatten(1, 2)
    return F.pixel_shuffle(blocks, 2)


def low_band(z: torch.Tensor) -> torch.Tensor:
    """The LL sub-band (first quarter of the channels) of a `haar_dwt` output."""
    return z[:, : z.shape[1] // 4]
