"""Certified (q, eta)-learnability (Wang, Xue, Li, Camtepe, Zhu, NDSS 2025), NeuralSec/certified-data-learnability.

Randomised smoothing over a surrogate's *parameters*: draw N copies theta + sigma * z of the
surrogate, measure each copy's accuracy, and read off an upper bound on the accuracy q-quantile
that holds, with confidence `confidence`, for every classifier whose parameters lie within L2
distance eta of the surrogate's (certify.py, `certify`): the quantile level moves to
q_upper = Phi(Phi^-1(q) + eta / sigma) and the bound is the k-th smallest sampled accuracy for the
smallest k with BinomCDF(k - 1; N, q_upper) > confidence (no such k: abstain).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import torch
from torch import nn


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) <= k], summed in log space (exact for the n of a certification)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
        for i in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def certified_index(n: int, q: float, eta: float, sigma: float, confidence: float) -> int | None:
    """0-based index into the ascending sampled accuracies of the certified bound, or None (abstain)."""
    q_upper = NormalDist().cdf(NormalDist().inv_cdf(q) + eta / sigma)
    for k in range(math.ceil(q_upper * n), n + 1):
        if binomial_cdf(k - 1, n, q_upper) > confidence:
            return k - 1
    return None


def certify(
    accuracies: Sequence[float], q: float, etas: Sequence[float], sigma: float, confidence: float
) -> dict[str, float | None]:
    """Certified (q, eta)-learnability for every eta: a sampled accuracy, or None where it abstains."""
    ranked = sorted(accuracies)
    out: dict[str, float | None] = {}
    for eta in etas:
        k = certified_index(len(ranked), q, eta, sigma, confidence)
        out[f"{eta:g}"] = None if k is None or k >= len(ranked) else ranked[max(k, 0)]
    return out


@torch.no_grad()
def smoothed_accuracies(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    sigma: float,
    draws: int,
    gen: torch.Generator,
) -> list[float]:
    """`evaluate(model)` under `draws` Gaussian perturbations of every parameter (restored after each)."""
    params = list(model.parameters())
    originals = [p.detach().clone() for p in params]
    scores = []
    try:
        for _ in range(draws):
            for p, o in zip(params, originals, strict=True):
                noise = torch.randn(o.shape, generator=gen, device=gen.device).to(o)
                p.copy_(o + sigma * noise)
            scores.append(float(evaluate(model)))
    finally:
        for p, o in zip(params, originals, strict=True):
            p.copy_(o)
    return scores
