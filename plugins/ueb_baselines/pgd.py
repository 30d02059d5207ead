"""L-infinity PGD and the differentiable augmentations the surrogate-based poisoners share.

All images are in [0, 1] pixel units; every step projects back onto the eps-ball and onto the
valid image range, so `x + delta` is always a real image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ueb.training import random_crop_flip


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip `delta` to the eps-ball and so that `x + delta` stays in [0, 1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0, 1) - x


def pgd_linf(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    descend: bool,
) -> torch.Tensor:
    """Signed-gradient steps on `objective(x + delta)`, projected after each step.

    `objective` maps the perturbed batch to a scalar; `descend` minimises it (error-minimising
    and targeted noise), otherwise it is maximised (adversarial examples). Only `delta` gets
    gradients, so the model's parameters are left untouched.
    """
    sign = -1.0 if descend else 1.0
    delta = project(x, delta.detach(), eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = objective(x + delta)
        (grad,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = project(x, delta + sign * step_size * grad.sign(), eps)
    return delta.detach()


def uniform_start(
    shape: torch.Size, eps: float, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform noise in [-eps, eps] drawn from `gen` (a random PGD start)."""
    return (torch.rand(shape, generator=gen, device=device) * 2 - 1) * eps


def crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, differentiable in `x`."""
    return random_crop_flip(x, padding, True, gen)


def translate_flip(x: torch.Tensor, gen: torch.Generator, shift: int = 8) -> torch.Tensor:
    """Random sub-pixel translation and flip by bilinear resampling, differentiable in `x`.

    The translation is uniform in +-shift/(size-1) of the half-width grid, i.e. up to about
    shift/2 pixels each way: the `RandomTransform` of Geiping et al. that TAP and EntF use.
    """
    b, _, h, w = x.shape
    dev = x.device
    limit = shift / max(w - 1, 1)
    t = (torch.rand(b, 2, generator=gen, device=gen.device).to(dev) * 2 - 1) * limit
    flip = torch.rand(b, generator=gen, device=gen.device).to(dev) < 0.5
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def brew(
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    batch_size: int,
    restarts: int,
    gen: torch.Generator,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Poison brewing as in Geiping et al.'s framework (used by TAP and EntF).

    Each restart starts from Gaussian noise scaled by eps (clipped to the ball); each of `steps`
    iterations makes one signed step *descending* `objective(images, index)` for every batch of
    `batch_size` images, in order, through the optional differentiable `augment`. The restart
    whose final-iteration mean objective is lowest wins.
    """
    best, best_score = None, float("inf")
    n = len(x)
    for _ in range(max(1, restarts)):
        delta = project(
            x, torch.randn(x.shape, generator=gen, device=gen.device).to(x.device) * eps, eps
        )
        score = 0.0
        for _ in range(steps):
            total = 0.0
            for i in range(0, n, batch_size):
                xb, db = (
                    x[i : i + batch_size],
                    delta[i : i + batch_size].clone().requires_grad_(True),
                )
                idx = torch.arange(i, min(i + batch_size, n), device=x.device)
                z = xb + db
                loss = objective(augment(z) if augment is not None else z, idx)
                (grad,) = torch.autograd.grad(loss, [db])
                with torch.no_grad():
                    delta[i : i + batch_size] = project(xb, db - step_size * grad.sign(), eps)
                total += float(loss.detach()) * len(xb)
            score = total / n
            if on_step is not None:
                on_step()
        if score < best_score:
            best, best_score = delta.clone(), score
    assert best is not None
    return best
