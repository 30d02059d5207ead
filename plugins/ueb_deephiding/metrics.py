"""Image-quality numbers for reports: PSNR and SSIM on [0, 1] images."""

from __future__ import annotations

import math

import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR in dB (images with identical content count as 100 dB)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    vals = torch.where(
        mse > 1e-10, 10 * torch.log10(1.0 / mse.clamp_min(1e-10)), torch.full_like(mse, 100.0)
    )
    return float(vals.mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (scikit-image, Gaussian-free 7x7 window, channels averaged) over images."""
    from skimage.metrics import structural_similarity

    a_np = a.detach().float().cpu().numpy()
    b_np = b.detach().float().cpu().numpy()
    side = a_np.shape[-1]
    win = min(7, side if side % 2 else side - 1)
    vals = [
        structural_similarity(x, y, data_range=1.0, channel_axis=0, win_size=win)
        for x, y in zip(a_np, b_np, strict=True)
    ]
    return float(sum(vals) / len(vals)) if vals else math.nan


def variance_shares(
    poisoned: torch.Tensor,
    clean: torch.Tensor,
    labels: torch.Tensor,
    hidden_idx: torch.Tensor,
    chunk: int = 4096,
) -> dict[str, float]:
    """How the spread of the perturbations x_ue - x_c splits between the class, the hidden
    image within the class, and the cover image (what is left with both fixed). The shares
    sum to 1: nested group means decompose the total sum of squares orthogonally."""
    n = len(labels)
    groups = labels.long() * (int(hidden_idx.max()) + 1 if n else 1) + hidden_idx.long()
    ids, group = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(ids), clean[0].numel(), dtype=torch.float64)
    square = 0.0
    for i in range(0, n, chunk):
        d = (poisoned[i : i + chunk].double() - clean[i : i + chunk].double()).flatten(1)
        sums.index_add_(0, group[i : i + chunk], d)
        square += float(d.pow(2).sum())
    counts = torch.bincount(group, minlength=len(ids)).double()
    group_labels = torch.div(ids, int(hidden_idx.max()) + 1 if n else 1, rounding_mode="floor")
    class_sums = torch.zeros(
        int(group_labels.max()) + 1 if n else 0, sums.shape[1], dtype=torch.float64
    )
    class_sums.index_add_(0, group_labels, sums)
    class_counts = torch.bincount(group_labels, weights=counts)
    present = class_counts > 0
    # sum of squares of group means weighted by size: sum_g |S_g|^2 / n_g, and likewise per class
    groups_ss = float((sums.pow(2).sum(1) / counts).sum())
    classes_ss = float((class_sums[present].pow(2).sum(1) / class_counts[present]).sum())
    grand_ss = float(sums.sum(0).pow(2).sum()) / n if n else 0.0
    total = square - grand_ss
    if total <= 0:
        return {"class": 0.0, "hidden_image": 0.0, "cover": 0.0}
    return {
        "class": (classes_ss - grand_ss) / total,
        "hidden_image": (groups_ss - classes_ss) / total,
        "cover": (square - groups_ss) / total,
    }
