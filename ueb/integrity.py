"""Integrity checks every poisoned set passes before any victim trains on it.

Shape and dtype, no NaN, values in [0, 1], the declared budget after 8-bit rounding, and, for a
poisoner that claims to be sample-wise, perturbations that really differ within a class (not
only where clipping to [0, 1] or to the budget acted).
A violation raises IntegrityError naming the poisoner.

Rounding tolerance: the stored poison is uint8, so a perturbation within eps before rounding
can be up to half a level (0.5/255) larger per changed value after it. The check allows
exactly that and nothing more.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ueb.errors import IntegrityError
from ueb.imageset import ImageSet, quantize
from ueb.interfaces import Budget

HALF_LEVEL = 0.5 / 255


def finalize_poison(clean: ImageSet, output: torch.Tensor, who: str) -> torch.Tensor:
    """Validate a poisoner's raw output and return it as uint8 on the CPU."""
    if not isinstance(output, torch.Tensor):
        raise IntegrityError(
            f"{who} returned {type(output).__name__}, not a tensor",
            "return the poisoned images as a tensor",
        )
    if tuple(output.shape) != tuple(clean.images.shape):
        raise IntegrityError(
            f"{who} returned images of shape {tuple(output.shape)}, expected {tuple(clean.images.shape)}",
            "return one poisoned image per training image, same size",
        )
    output = output.detach().cpu()
    if output.dtype == torch.uint8:
        return output
    if not output.is_floating_point():
        raise IntegrityError(
            f"{who} returned dtype {output.dtype}", "return float images in [0, 1] or uint8"
        )
    if not torch.isfinite(output).all():
        bad = int((~torch.isfinite(output)).flatten(1).any(1).sum())
        raise IntegrityError(
            f"{who} returned NaN/inf values in {bad} images",
            "fix the poisoner (check for divisions by zero)",
        )
    lo, hi = float(output.min()), float(output.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise IntegrityError(
            f"{who} returned values in [{lo:.4f}, {hi:.4f}], outside [0, 1]",
            "clamp the poisoned images to [0, 1]",
        )
    return quantize(output.float())


def perturbation_stats(clean: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float | None]:
    """Norms of the stored (uint8) perturbation and PSNR in dB, averaged over images.

    `chroma_share` (3-channel images) is the fraction of the perturbation's energy off the grey
    axis, i.e. what a grayscale countermeasure (ISS) can remove; on grey source images a
    surrogate's gradients are nearly channel-symmetric, so this is what decides ISS-grayscale.
    """
    delta = (poisoned.float() - clean.float()) / 255.0
    flat = delta.flatten(1)
    mse = flat.pow(2).mean(1)
    psnr = torch.where(
        mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-20)), torch.full_like(mse, math.inf)
    )
    finite = psnr[torch.isfinite(psnr)]
    changed = (delta != 0).any(1).flatten(1).sum(1).float()  # pixel positions changed
    return {
        "linf_max": float(flat.abs().max()) if flat.numel() else 0.0,
        "l2_mean": float(flat.norm(dim=1).mean()),
        "l2_max": float(flat.norm(dim=1).max()),
        "l0_max": float(changed.max()),
        # None (JSON null) when nothing changed: the store writes strict JSON, and inf is not
        "psnr_db": float(finite.mean()) if finite.numel() else None,
        "changed_images": float((flat.abs().sum(1) > 0).float().mean()),
        **_chroma_share(delta),
    }


def _chroma_share(delta: torch.Tensor) -> dict[str, float]:
    if delta.dim() != 4 or delta.shape[1] != 3:
        return {}
    energy = float(delta.pow(2).sum())
    off_grey = float((delta - delta.mean(1, keepdim=True)).pow(2).sum())
    return {"chroma_share": off_grey / energy if energy > 0 else 0.0}


def check_budget(clean: torch.Tensor, poisoned: torch.Tensor, budget: Budget, who: str) -> None:
    delta = (poisoned.to(torch.int16) - clean.to(torch.int16)).float() / 255.0
    flat = delta.flatten(1)
    if budget.norm == "unbounded":
        return
    if budget.norm == "linf":
        worst = float(flat.abs().max()) if flat.numel() else 0.0
        if worst > budget.eps + HALF_LEVEL + 1e-7:
            raise IntegrityError(
                f"{who} exceeds its Linf budget: {worst * 255:.2f}/255 > {budget.eps * 255:.2f}/255 after 8-bit rounding",
                "clip the perturbation to the declared eps",
            )
    elif budget.norm == "l2":
        norms = flat.norm(dim=1)
        slack = HALF_LEVEL * (flat != 0).sum(1).float().sqrt()
        over = norms > budget.eps + slack + 1e-6
        if bool(over.any()):
            i = int(torch.nonzero(over)[0])
            raise IntegrityError(
                f"{who} exceeds its L2 budget on {int(over.sum())} images (image {i}: {float(norms[i]):.4f} > {budget.eps:.4f})",
                "scale each perturbation to the declared L2 norm",
            )
    elif budget.norm == "l0":
        changed = (delta != 0).any(1).flatten(1).sum(1)
        if int(changed.max()) > budget.eps + 1e-9:
            raise IntegrityError(
                f"{who} exceeds its L0 budget: {int(changed.max())} pixels changed in one image > {budget.eps:g}",
                "change at most the declared number of pixel positions",
            )
    else:
        raise IntegrityError(
            f"{who} declares an unknown norm '{budget.norm}'", "use linf, l2, l0 or unbounded"
        )


def check_sample_wise(
    clean: ImageSet, poisoned: torch.Tensor, who: str, budget: Budget | None = None
) -> None:
    """A sample-wise poisoner must give different perturbations to images of one class, and
    not only where clipping made them differ.

    Clipping-aware: one class-wise perturbation d, added to different images and clipped to
    [0, 1] and to the budget's Linf radius, gives stored perturbations that differ exactly where
    a clip acted. So each stored value is read as a bound on an underlying d at its position:
    an unclipped value pins it (to within one 8-bit level, the rounding), a value at 255 or at
    +eps says d >= value, a value at 0 or at -eps says d <= value. If, at every position, the
    bounds of all images of some class can hold at once, one pattern per class explains that
    class's poison, and the claim to be sample-wise fails.
    """
    delta = poisoned.to(torch.int16) - clean.images.to(torch.int16)
    poisoned16 = poisoned.to(torch.int16)
    radius = _linf_levels(budget)
    far = torch.tensor(1 << 12, dtype=torch.int16)
    for c in range(clean.num_classes):
        idx = torch.nonzero(clean.labels == c).flatten()
        if len(idx) < 2:
            continue
        d, p = delta[idx], poisoned16[idx]
        capped_high = p >= 255  # pushed down to 1: the underlying change was at least d
        capped_low = p <= 0
        if radius is not None:
            capped_high = capped_high | (d >= radius)
            capped_low = capped_low | (d <= -radius)
        lower = torch.where(capped_low, -far, d).amax(0)  # the largest lower bound
        upper = torch.where(capped_high, far, d).amin(0)  # the smallest upper bound
        if bool((lower - upper <= 1).all()):
            raise IntegrityError(
                f"{who} claims to be sample-wise but its perturbations of class {c} are one "
                "pattern wherever clipping (to [0, 1] or the budget) did not act",
                "index the perturbation by sample, not by label (or declare the poisoner class-wise)",
            )


def _linf_levels(budget: Budget | None) -> float | None:
    """The Linf radius in 8-bit levels, less half a level: a stored change at least this large
    may be the clip's (None when the budget clips no single value)."""
    if budget is None or budget.norm != "linf" or not math.isfinite(budget.eps):
        return None
    return budget.eps * 255 - 0.5 - 1e-6


def check_poison(
    clean: ImageSet, output: torch.Tensor, budget: Budget, sample_wise: bool, who: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    """All checks; returns the uint8 poison and its statistics."""
    poisoned = finalize_poison(clean, output, who)
    clean_u8 = clean.uint8().cpu()
    check_budget(clean_u8, poisoned, budget, who)
    if sample_wise:
        check_sample_wise(clean.with_images(clean_u8), poisoned, who, budget)
    stats: dict[str, Any] = dict(perturbation_stats(clean_u8, poisoned))
    stats["budget"] = budget.describe()
    return poisoned, stats
