"""Orthogonal Projection: remove the directions a linear model finds most predictive.

Method: Sandoval-Segura et al. 2023, "What can we learn from unlearnable datasets?"
(NeurIPS 2023). Settings from the official repository (psandovalsegura/learn-from-unlearnable,
`orthogonal_projection_step_1.py`, `orthogonal_projection_step_2.py`, `utils_projection.py`):

1. fit a multinomial logistic regression (one linear layer, no bias) on the flattened
   poisoned training images in [0, 1]: SGD, learning rate 0.1, batch 1024, 20 epochs, the
   rate divided by 10 at 50% and 75% of the epochs;
2. orthonormalise the class weight vectors (normalise each, then QR) and subtract from every
   training image its projection onto their span; the result is not clipped to [0, 1];
3. train the victim on the projected images; the clean test set is left as it is (the
   official `--project-test` switch is `project_test` here).

The official step 2 trains its victim with extra augmentations (rotation, affine, colour
jitter, CutMix); here the victim trains under the benchmark's common protocol, so every
countermeasure is compared on the same training recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Countermeasure, RunContext, Stage
from ueb.params import bounded
from ueb.training import resolve_device


def fit_linear_weights(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    progress: Any = None,
) -> torch.Tensor:
    """Class weight vectors (C, D) of a bias-free softmax regression fitted by SGD."""
    n, d = x.shape
    bound = 1.0 / d**0.5  # nn.Linear's default initialisation
    w0 = (torch.rand(num_classes, d, generator=gen) * 2 - 1) * bound
    w = w0.to(x.device).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [int(epochs * 0.5), int(epochs * 0.75)], gamma=0.1
    )
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(x.device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(x[idx] @ w.t(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress is not None:
            progress.advance()
    return w.detach()


def orthonormal_basis(weights: torch.Tensor) -> torch.Tensor:
    """(D, C) orthonormal basis of the span of the rows of `weights` (normalised, then QR)."""
    w = weights.double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    q, _ = torch.linalg.qr(w.t(), mode="reduced")
    return q


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """x minus its projection onto the columns of `basis` (x: (N, D), basis: (D, C) orthonormal)."""
    xd = x.double()
    return (xd - (xd @ basis) @ basis.t()).to(x.dtype)


class OrthogonalProjection(Countermeasure["OrthogonalProjection.Params"]):
    """Orthogonal Projection (Sandoval-Segura et al. 2023): project out a linear model's class weights."""

    stage: ClassVar[Stage] = "data"
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"epochs": 2}}

    @dataclass(frozen=True)
    class Params:
        epochs: int = bounded(20, ge=1)
        batch_size: int = bounded(1024, ge=1)
        lr: float = bounded(0.1, gt=0)
        project_test: bool = False
        clamp: bool = False  # the official code keeps the projected values as they are

        def __post_init__(self) -> None:
            if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
                raise ValueError("epochs and batch_size must be positive and lr > 0")

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.weights: torch.Tensor | None = None  # (C, D), the fitted class weights
        self.basis: torch.Tensor | None = None  # (D, C), orthonormal basis of their span
        self.linear_train_acc: float | None = None

    def _project(self, images: ImageSet, basis: torch.Tensor) -> torch.Tensor:
        x = images.float01().flatten(1)
        out = project_out(x.to(basis.device), basis).view(images.images.shape).cpu()
        return out.clamp(0, 1) if self.params.clamp else out

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        p = self.params
        device = resolve_device(ctx.device)
        x = train.float01().flatten(1).to(device)
        y = train.labels.to(device)
        gen = torch.Generator().manual_seed(ctx.seed)
        with ctx.progress.task("orthogonal projection: linear model", total=p.epochs) as task:
            w = fit_linear_weights(x, y, train.num_classes, p.epochs, p.batch_size, p.lr, gen, task)
        self.weights = w.cpu()
        self.basis = orthonormal_basis(w)
        with torch.no_grad():
            self.linear_train_acc = 100.0 * float(((x @ w.t()).argmax(1) == y).float().mean())
        projected = self._project(train, self.basis)
        return train.with_images(
            projected.float(),
            countermeasure=self.name,
            linear_train_acc=self.linear_train_acc,
        )

    def transform_test_set(self, test: ImageSet, ctx: RunContext) -> ImageSet:
        if not self.params.project_test:
            return test
        if self.basis is None:
            raise ConfigError(
                "orthogonal-projection: project_test needs the training set projected first",
                "call transform_train_set before transform_test_set",
            )
        return test.with_images(self._project(test, self.basis).float(), countermeasure=self.name)
