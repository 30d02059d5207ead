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

Step 3's recipe: `shared` trains under the run's protocol; `official` under
`orthogonal_projection_step_2.py`'s: `victim_epochs` epochs (`--epochs 50`) at batch 128, SGD
lr 0.1, momentum 0.9, weight decay 1e-4, the rate x0.1 at epochs int(0.5 E) and int(0.75 E),
every image through RandomRotation(10), RandomAffine(0, shear=10, scale=(0.8, 1.2)),
ColorJitter(0.2, 0.2, 0.2), RandomCrop(padding 4) and a horizontal flip in that order, then
CutMix (beta 1) on a batch with probability 0.5. The augmentations are batched here; each
follows torchvision's tensor semantics (nearest-pixel warps filled with 0; the jitter clamps
to [0, 1]).

Stage: protocol, since the projection and the victim's training go together (the projection
runs inside `fit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.interfaces import (
    Batch,
    Countermeasure,
    Fitter,
    RunContext,
    Stage,
    StepContext,
    TrainResult,
)
from ueb.params import bounded
from ueb.profile import TrainingConfig
from ueb.training import random_crop_flip, resolve_device

from ._recipe import EpochRecipe, Recipe, fit_by_recipe, recipe_facts

# orthogonal_projection_step_2.py: --batch_size 128, --lr 0.1, --momentum 0.9,
# --weight_decay 1e-4, SGD without Nesterov. The crop and flip come after the rotation, affine
# and jitter there, so they run in the step's augmentation, not in the trainer's.
OFFICIAL = EpochRecipe(
    batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, crop_padding=0, flip=False
)
ROTATION_DEGREES = 10.0  # RandomRotation(10)
SHEAR_DEGREES = 10.0  # RandomAffine(0, shear=10, ...): x-axis shear in (-10, 10) degrees
SCALE_RANGE = (0.8, 1.2)  # RandomAffine(..., scale=(0.8, 1.2))
JITTER = 0.2  # ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)
CROP_PADDING = 4  # RandomCrop(side, padding=4), then RandomHorizontalFlip()
CUTMIX_PROB = 0.5  # --cutmix_prob 0.5, with --beta 1: the area ratio is uniform
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def official_decay_epochs(epochs: int) -> tuple[int, int]:
    """MultiStepLR(milestones=[int(E * 0.5), int(E * 0.75)]), stepped once per epoch."""
    return int(epochs * 0.5), int(epochs * 0.75)


# --------------------------------------------------------------------------- step 2 augmentations


def _uniform(
    n: int, lo: float, hi: float, gen: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    u = torch.rand(n, generator=gen, device=gen.device, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(like.device)


def _inverse_2x2(m: torch.Tensor) -> torch.Tensor:
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    adjugate = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adjugate / (a * d - b * c)[:, None, None]


def warp(x: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """Each image under its linear map (B, 2, 2) about the image centre, in pixel units (x right,
    y down): nearest pixel, 0 outside, as torchvision's tensor rotate and affine."""
    b, _, h, w = x.shape
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64, device=forward.device)
    inverse = _inverse_2x2(forward.double())  # output pixel -> input pixel
    lin = inverse * half[None, None, :] / half[None, :, None]  # in affine_grid's [-1, 1] units
    theta = torch.cat([lin, lin.new_zeros(b, 2, 1)], dim=2).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def rotation_matrices(degrees: torch.Tensor) -> torch.Tensor:
    """torchvision's rotate(img, angle) for each angle (counter-clockwise on screen)."""
    t = torch.deg2rad(-degrees.double())
    c, s = torch.cos(t), torch.sin(t)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def shear_scale_matrices(shear_degrees: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """torchvision's affine(img, angle=0, translate=0, scale, shear=[sx, 0]) for each pair."""
    k = -torch.tan(torch.deg2rad(shear_degrees.double()))
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    m = torch.stack([torch.stack([one, k], -1), torch.stack([zero, one], -1)], -2)
    return m * scale.double()[:, None, None]


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1 - f) * other).clamp(0, 1)


def adjust(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness (op 0), adjust_contrast (1) or adjust_saturation (2) on
    float tensors, one factor per image; each clamps to [0, 1]."""
    grey = _grey(x) if x.shape[1] == 3 else x
    if op == 0:
        return _blend(x, torch.zeros_like(x), factor)
    if op == 1:
        return _blend(x, grey.mean(dim=(1, 2, 3), keepdim=True), factor)
    return x if x.shape[1] == 1 else _blend(x, grey, factor)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation = strength): factors uniform in
    [1 - strength, 1 + strength] and the three operations in a random order, per image."""
    b = x.shape[0]
    factors = [_uniform(b, 1 - strength, 1 + strength, gen, x) for _ in range(3)]
    keys = torch.rand(b, 3, generator=gen, device=gen.device).to(x.device)
    order = keys.argsort(dim=1)  # order[i, k]: the operation image i gets in place k
    for place in range(3):
        for op in range(3):
            chosen = (order[:, place] == op).view(-1, 1, 1, 1)
            x = torch.where(chosen, adjust(x, op, factors[op]), x)
    return x


def strong_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Step 2's per-image pipeline: rotation, shear and scale, colour jitter, crop, flip."""
    b = x.shape[0]
    angles = _uniform(b, -ROTATION_DEGREES, ROTATION_DEGREES, gen, x)
    x = warp(x, rotation_matrices(angles))
    scale = _uniform(b, *SCALE_RANGE, gen, x)
    shear = _uniform(b, -SHEAR_DEGREES, SHEAR_DEGREES, gen, x)
    x = warp(x, shear_scale_matrices(shear, scale))
    x = color_jitter(x, JITTER, gen)
    return random_crop_flip(x, CROP_PADDING, True, gen)


def cutmix_batch(batch: Batch, prob: float, gen: torch.Generator) -> Batch:
    """Step 2's CutMix, one box for the whole batch: with probability `prob`, area ratio
    lam ~ U(0, 1) (Beta(1, 1)), a box of sides int(side * sqrt(1 - lam)) centred on a uniform
    pixel and clipped at the border gets the same region of a permuted batch; the loss weights
    the two labels by the pixel share left (lam = 1 - box area / image area)."""
    x = batch.x
    b, _, h, w = x.shape
    dev, gd = x.device, gen.device
    active = (torch.rand(1, generator=gen, device=gd) < prob).to(dev)
    lam = torch.rand(1, generator=gen, device=gd, dtype=torch.float64).to(dev)
    perm = torch.randperm(b, generator=gen, device=gd).to(dev)
    cy = torch.randint(0, h, (1,), generator=gen, device=gd).to(dev)
    cx = torch.randint(0, w, (1,), generator=gen, device=gd).to(dev)
    cut = torch.sqrt(1 - lam)
    half_h = torch.floor(h * cut).long() // 2
    half_w = torch.floor(w * cut).long() // 2
    y0, y1 = (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h)
    x0, x1 = (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    mask = inside & active
    mixed = torch.where(mask, x[perm], x)
    area = ((y1 - y0) * (x1 - x0)).float() / float(h * w)
    kept = torch.where(active, 1 - area, torch.ones_like(area)).expand(b)
    return Batch(mixed, batch.y, batch.y[perm], kept.to(x.dtype))


class OfficialStep:
    """The step hooks of the official step 2: strong augmentations, then CutMix."""

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        x = batch.x
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        out = strong_augment(x.float(), step.generator)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return cutmix_batch(Batch(out, batch.y), CUTMIX_PROB, step.generator)

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        return batch.loss(model(batch.x))


# --------------------------------------------------------------------------- step 1 and the projection


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

    stage: ClassVar[Stage] = "protocol"
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"epochs": 2},
        "paper": {"recipe": "official"},
    }

    @dataclass(frozen=True)
    class Params:
        epochs: int = bounded(20, ge=1)  # the linear model's (step 1)
        batch_size: int = bounded(1024, ge=1)
        lr: float = bounded(0.1, gt=0)
        project_test: bool = False
        clamp: bool = False  # the official code keeps the projected values as they are
        recipe: Recipe = "shared"  # "official": step 2's epochs, SGD, augmentations and CutMix
        victim_epochs: int = bounded(50, ge=1)  # the official recipe's epochs (`--epochs 50`)

        def __post_init__(self) -> None:
            if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
                raise ValueError("epochs and batch_size must be positive and lr > 0")

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.weights: torch.Tensor | None = None  # (C, D), the fitted class weights
        self.basis: torch.Tensor | None = None  # (D, C), orthonormal basis of their span
        self.linear_train_acc: float | None = None

    def cost(self) -> float:
        # 100 CIFAR-10 epochs at batch 128 are about the paper profile's 40,000 iterations
        p = self.params
        return p.victim_epochs / 100 if p.recipe == "official" else 1.0

    def _project(self, images: ImageSet, basis: torch.Tensor) -> torch.Tensor:
        x = images.float01().flatten(1)
        out = project_out(x.to(basis.device), basis).view(images.images.shape).cpu()
        return out.clamp(0, 1) if self.params.clamp else out

    def project(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        """Steps 1 and 2: the training set off the span of a linear model's class weights."""
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
        """With `project_test`, the test images off the same span; before `fit` (or `project`)
        has found the span there is nothing to project with, and the set comes back as it is
        (`fit` projects the test set it evaluates on itself)."""
        if not self.params.project_test or self.basis is None:
            return test
        return test.with_images(self._project(test, self.basis).float(), countermeasure=self.name)

    def official_training(self, cfg: TrainingConfig, n: int) -> TrainingConfig:
        """The run's `cfg` with step 2's protocol for `victim_epochs` epochs of n images."""
        epochs = self.params.victim_epochs
        return OFFICIAL.training(cfg, n, epochs, official_decay_epochs(epochs))

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> TrainResult:
        p = self.params
        projected = self.project(train, ctx)
        test = self.transform_test_set(test, ctx)
        official = self.official_training(trainer.cfg, len(train))
        result = fit_by_recipe(
            p.recipe, official, model, projected, test, trainer, ctx, self, OfficialStep(),
            self.name,
        )  # fmt: skip
        result.extra.update(
            {
                **recipe_facts(p.recipe, p.victim_epochs, len(train), OFFICIAL.batch_size),
                "linear_train_acc": self.linear_train_acc,
            }
        )
        return result
