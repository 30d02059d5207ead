"""NTGA: neural tangent generalization attacks (Yuan & Wu, ICML 2021, "Neural Tangent
Generalization Attacks"; code lionelmessi6410/ntga, as APBench runs it: the `cnn` surrogate at
Linf 8/255).

The surrogate is an infinitely wide network, whose trained prediction is a closed form in its
neural tangent kernel: a Gaussian process trained for time t on the training data. The
training set is cut into blocks of 512 images (B-NTGA); each block is perturbed by projected
gradient ascent on the cross-entropy that the GP trained on that block alone makes on a
held-out validation set, so the poisoned data generalise badly. The kernels come from JAX and
neural-tangents (`pip install 'ueb[ntga]'`), imported only when NTGA runs.
Settings and sources: docs/poisoners-apbench.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from ueb_baselines import surrogate as S

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, RunContext
from ueb.params import bounded

from . import ntk

GradFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class NeuralTangentGeneralization(Poisoner):
    """Blocks of training images perturbed to maximise an NTK-GP's validation loss, Linf 8/255."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"block_size": 64, "val_size": 40, "val_batch": 20, "nb_iter": 2},
        "quick": {"block_size": 256, "val_size": 500, "val_batch": 50, "model": "fnn"},
    }

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        nb_iter: int = bounded(10, ge=1)
        step_scale: float = bounded(1.1, gt=0)  # step = eps / nb_iter * step_scale
        t: float = bounded(64.0, gt=0)  # the GP's training time
        block_size: int = bounded(512, ge=2)
        val_size: int = bounded(10_000, ge=1)  # validation images held out of the training set
        val_batch: int = bounded(30, ge=1)
        model: Literal["cnn", "fnn"] = "cnn"
        w_var: float = bounded(1.76, gt=0)
        b_var: float = bounded(0.18, ge=0)
        diag_reg: float = bounded(1e-4, ge=0)

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def preflight(self) -> None:
        ntk.require_jax()

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        ntk.require_jax()
        p = self.params
        grad_fn = ntk.validation_loss_grad(p.model, train.num_classes, p.w_var, p.b_var, p.t,
                                           p.diag_reg, p.val_batch)  # fmt: skip
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(
            ctx, "ntga-noise", rec, lambda _ck: self.perturb(train, ctx, grad_fn)
        )
        return (train.float01() + noise).clamp(0, 1)

    # ----------------------------------------------------------------- the pipeline (no JAX here)

    def validation_split(self, train: ImageSet, seed: int) -> np.ndarray:
        """Indices of the held-out validation images, a seeded random subset of the set."""
        p = self.params
        if len(train) < 2:
            raise ConfigError("ntga needs at least two training images", "use more data")
        size = min(p.val_size, len(train))
        size -= size % min(p.val_batch, size)  # whole validation chunks only
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        return perm[: max(1, size)].numpy()

    def perturb(self, train: ImageSet, ctx: RunContext, grad_fn: GradFn) -> torch.Tensor:
        """The noise for every training image, block by block (in a seeded order)."""
        p = self.params
        x = to_nhwc(train.float01())
        onehot = np.eye(train.num_classes, dtype=np.float64)[train.labels.numpy()]
        val = self.validation_split(train, ctx.seed)
        x_val, y_val = x[val], onehot[val]
        order = torch.randperm(
            len(train), generator=torch.Generator().manual_seed(ctx.seed + 1)
        ).numpy()
        adv = x.copy()
        blocks = [order[i : i + p.block_size] for i in range(0, len(order), p.block_size)]
        with ctx.progress.task("NTGA blocks", total=len(blocks)) as task:
            for block in blocks:
                adv[block] = self.attack_block(x[block], onehot[block], x_val, y_val, grad_fn)
                task.advance()
        self.facts = {"blocks": len(blocks), "validation_images": len(val), "model": p.model}
        return torch.from_numpy(to_nchw(adv - x)).float()

    def attack_block(
        self, xb: np.ndarray, yb: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, grad_fn: GradFn
    ) -> np.ndarray:
        """Projected gradient *ascent* on the validation loss, from the clean block, in steps of
        step_scale * eps / nb_iter, each projected onto the Linf ball and [0, 1]."""
        p = self.params
        step = p.eps / p.nb_iter * p.step_scale
        adv = xb.copy()
        for _ in range(p.nb_iter):
            g = grad_fn(adv, yb, x_val, y_val)
            adv = np.clip(xb + np.clip(adv + step * np.sign(g) - xb, -p.eps, p.eps), 0.0, 1.0)
        return adv


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().double().numpy()


def to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
