"""Image-quality numbers for reports: PSNR and SSIM on [0, 1] images."""

from __future__ import annotations

import math

import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR in dB (images with identical content count as 100 dB)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    vals = torch.where(mse > 1e-10, 10 * torch.log10(1.0 / mse.clamp_min(1e-10)), torch.full_like(mse, 100.0))
    return float(vals.mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (scikit-image, Gaussian-free 7x7 window, channels averaged) over images."""
    from skimage.metrics import structural_similarity

    a_np = a.detach().float().cpu().numpy()
    b_np = b.detach().float().cpu().numpy()
    side = a_np.shape[-1]
    win = min(7, side if side % 2 else side - 1)
    vals = [structural_similarity(x, y, data_range=1.0, channel_axis=0, win_size=win) for x, y in zip(a_np, b_np, strict=True)]
    return float(sum(vals) / len(vals)) if vals else math.nan
