"""Adversarial training (Madry et al. 2018) with PGD, L-inf and L2, as the paper's Table I uses it.

Settings (paper Sec. IV-A5 and A.1.2): PGD-10, radius 8/255 for L-inf and 1 for L2. Each
step's training batch is replaced by PGD examples crafted against the current model from a
random start inside the ball. The step size defaults to 2.5 * eps / steps (the rule of the
MadryLab robustness library): 2/255 for L-inf 8/255 with 10 steps, the paper's value, and 0.25
for L2 radius 1, so the L2 attack can cross its ball (the paper's single "step 2/255" would move
an L2 example at most 0.08 in ten steps). The number of PGD steps is a parameter, so CPU
profiles can scale the (steps + 1)-fold cost down; the default step size follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from ueb.interfaces import Batch, Countermeasure, StepContext
from ueb.params import bounded


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps: enough travel to cross the ball with room for the projection."""
    return 2.5 * eps / max(1, steps)


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The closest point of the `norm` ball of radius `eps` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _norms(delta)
    return delta * torch.clamp(eps / (n + 1e-12), max=1.0)


def random_start(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator) -> torch.Tensor:
    """A uniform random point of the ball (L-inf: each pixel in [-eps, eps]; L2: uniform in volume)."""
    shape, dev = x.shape, gen.device
    if norm == "linf":
        return ((torch.rand(shape, generator=gen, device=dev) * 2 - 1) * eps).to(x.device)
    direction = torch.randn(shape, generator=gen, device=dev).to(x.device)
    direction = direction / (_norms(direction) + 1e-12)
    d = x[0].numel()
    radius = torch.rand(shape[0], generator=gen, device=dev).to(x.device) ** (1.0 / d) * eps
    return direction * radius.view(-1, *([1] * (x.dim() - 1)))


def pgd(
    model: nn.Module,
    batch: Batch,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    gen: torch.Generator,
    start: bool = True,
) -> torch.Tensor:
    """PGD maximising the batch's training loss; returns adversarial images in [0, 1]."""
    x = batch.x.detach()
    delta = random_start(x, norm, eps, gen) if start else torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = batch.loss(model(x + delta))
            (grad,) = torch.autograd.grad(loss, delta)
        grad = grad.detach().float()
        move = grad.sign() if norm == "linf" else grad / (_norms(grad) + 1e-12)
        delta = project(delta.detach() + step_size * move, norm, eps)
        # Clamping to the image range only shrinks each |delta_i|, so the ball still holds.
        delta = ((x + delta).clamp(0, 1) - x).detach()
    return (x + delta).detach()


class AdversarialTraining(Countermeasure):
    """Madry-style PGD adversarial training: train on PGD examples of the current model.

    Defaults: L-inf, eps 8/255, PGD-10, random start, step 2.5 * eps / steps (2/255 here, the
    paper's). For `norm="l2"` (radius 1) the same rule gives 0.25 per step: normalised-gradient
    steps that end on the radius-1 sphere. `step_size` overrides the rule (`2/255` reproduces
    the paper's literal text for L2). The attack runs with the model in eval mode (batch-norm
    statistics untouched), as the ISS, TRADES and REM reference implementations do;
    `attack_mode="train"` keeps train mode.
    """

    version = "2"  # 2: L2 step size 2.5 * eps / steps instead of 2/255
    stage = "train"

    @dataclass(frozen=True)
    class Params:
        norm: Literal["linf", "l2"] = "linf"
        eps: float = bounded(8 / 255, gt=0)  # Linf (<= 1) or L2 radius
        step_size: float | None = bounded(None, gt=0)  # None: 2.5 * eps / steps
        steps: int = bounded(10, ge=1)
        random_start: bool = True
        attack_mode: Literal["eval", "train"] = "eval"

        def __post_init__(self) -> None:
            if (
                self.steps < 0
                or self.eps < 0
                or (self.step_size is not None and self.step_size < 0)
            ):
                raise ValueError("steps, eps and step_size must be >= 0")

    def cost(self) -> float:
        return float(self.params.steps + 1)  # k PGD steps plus the training step

    @property
    def step_size(self) -> float:
        p = self.params
        return default_step_size(p.eps, p.steps) if p.step_size is None else p.step_size

    def bind(self, training: Any) -> Any:
        """The Params with the step size the attack uses written out (what is hashed and stored)."""
        return replace(self.params, step_size=self.step_size)

    def adversarial(self, model: nn.Module, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        p = self.params
        was_training = model.training
        if p.attack_mode == "eval":
            model.eval()
        try:
            return pgd(model, batch, p.norm, p.eps, self.step_size, p.steps, gen, p.random_start)
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        x_adv = self.adversarial(model, batch, step.generator)
        return batch.loss(model(x_adv))
