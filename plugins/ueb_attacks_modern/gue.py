"""GUE: game-theoretic unlearnable example generator (Liu, Wang, Gao, AAAI 2024).

The attacker (leader) and the victim (follower) play a Stackelberg game: the attacker's U-Net
generator G gives each image the perturbation eps * G(x); the victim trains on the poisoned
images; the attacker wants that victim to fail on clean data. Following hong-xian/gue (gue.py,
models/unet.py, README.md), the bi-level problem is solved with BOME (Liu et al. 2022,
first-order value-function penalty) on every batch:

* follower value: a copy of the classifier takes `inner_steps` Adam steps on the poison loss
  g(G, theta) = CE(f_theta(clip(x + eps G(x))), y), approximating theta*;
* leader objective: f(theta) = mean over images of max over wrong classes k of CE(f_theta(x), k)
  on the clean images (small when the classifier puts a wrong class first);
* constraint q = g(G, theta) - g(G, theta*); with lambda = relu((eta |grad q|^2 -
  <grad_theta f, grad_theta q>) / |grad q|^2), G descends lambda grad_G q and the classifier
  descends grad_theta f + lambda grad_theta q (plain SGD both).

The released poison is x + eps G(x) with G in eval mode, clipped to [0, 1]. Sources:
docs/poisoners-modern.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from ueb_baselines import surrogate as S

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .unet import PerturbationUNet


def leader_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_i max_{k != y_i} CE(logits_i, k): the attacker's objective on clean images."""
    k = logits.shape[1]
    shifted = [(y + i) % k for i in range(1, k)]
    losses = torch.stack([F.cross_entropy(logits, t, reduction="none") for t in shifted])
    return losses.max(0).values.mean()


class GameTheoreticUnlearnable(Poisoner):
    """GUE: a U-Net perturbation generator trained by BOME against a follower classifier."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "surrogate": "fastnet",
            "epochs": 1,
            "batch_size": 20,
            "inner_steps": 5,
            "generator_width": 4,
        },
        "quick": {"surrogate": "fastnet", "epochs": 1, "inner_steps": 3, "generator_width": 16},
    }

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        epochs: int = bounded(50, ge=1)
        batch_size: int = bounded(256, ge=2)
        inner_steps: int = bounded(10, ge=1)  # Adam steps approximating theta*
        eta: float = bounded(1.5, gt=0)
        lr_classifier: float = bounded(0.01, gt=0)
        lr_generator: float = bounded(0.1, gt=0)
        lr_inner: float = bounded(1e-4, gt=0)
        generator_width: int = bounded(64, ge=1)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        if train.num_classes < 2:
            raise ConfigError(
                "GUE needs at least two classes", "use a dataset with several classes"
            )
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "gue-noise", rec, lambda ck: self._generate(train, ctx, ck))
        return (train.float01() + noise).clamp(0, 1)

    # ----------------------------------------------------------------------------- pieces

    def _poisoned(self, gen: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (x + gen(x) * self.params.eps).clamp(0, 1)

    def _follower(
        self, gen: nn.Module, cls: nn.Module, xb: torch.Tensor, yb: torch.Tensor
    ) -> nn.Module:
        """theta*: a copy of the classifier after `inner_steps` Adam steps on the poison."""
        tmp = copy.deepcopy(cls).train()
        opt = torch.optim.Adam(tmp.parameters(), lr=self.params.lr_inner)
        for _ in range(self.params.inner_steps):
            with torch.no_grad():  # G is fixed here; its BatchNorm statistics still move
                xp = self._poisoned(gen, xb)
            loss = F.cross_entropy(tmp(xp), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return tmp

    def _bome_step(
        self, gen: nn.Module, cls: nn.Module, gen_opt: torch.optim.Optimizer, cls_opt: torch.optim.Optimizer,
        xb: torch.Tensor, yb: torch.Tensor,
    ) -> dict[str, float]:  # fmt: skip
        tmp = self._follower(gen, cls, xb, yb)
        theta, a = list(cls.parameters()), list(gen.parameters())
        f_loss = leader_loss(cls(xb), yb)
        grad_f = torch.autograd.grad(f_loss, theta)
        g_cls = F.cross_entropy(cls(self._poisoned(gen, xb)), yb)
        g_tmp = F.cross_entropy(tmp(self._poisoned(gen, xb)), yb)
        grad_q_a = torch.autograd.grad(g_cls - g_tmp, a, retain_graph=True)
        grad_q_theta = torch.autograd.grad(g_cls, theta)
        flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
        q_theta, q_a, f_theta = flat(grad_q_theta), flat(grad_q_a), flat(grad_f)
        norm_q = q_theta.pow(2).sum() + q_a.pow(2).sum()
        lam = F.relu((self.params.eta * norm_q - (f_theta * q_theta).sum()) / (norm_q + 1e-8))
        gen_opt.zero_grad(set_to_none=True)
        for param, g in zip(a, grad_q_a, strict=True):
            param.grad = lam * g
        gen_opt.step()
        cls_opt.zero_grad(set_to_none=True)
        for param, gf, gq in zip(theta, grad_f, grad_q_theta, strict=True):
            param.grad = gf + lam * gq
        cls_opt.step()
        return {
            "leader": float(f_loss.detach()),
            "poison": float(g_cls.detach()),
            "q": float((g_cls - g_tmp).detach()),
            "lambda": float(lam.detach()),
        }

    # ----------------------------------------------------------------------------- search

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev).float()
        y = train.labels.to(dev)
        cls = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed).train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed + 1)
            gen = PerturbationUNet(train.channels, p.generator_width).to(dev).train()
        gen_opt = torch.optim.SGD(gen.parameters(), lr=p.lr_generator)
        cls_opt = torch.optim.SGD(cls.parameters(), lr=p.lr_classifier)
        order_gen = torch.Generator().manual_seed(ctx.seed + 2)
        start = 0
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            cls.load_state_dict(state["cls"])
            gen.load_state_dict(state["gen"])
            gen_opt.load_state_dict(state["gen_opt"])
            cls_opt.load_state_dict(state["cls_opt"])
            order_gen.set_state(state["order_gen"])
            start = state["epoch"]
        last: dict[str, float] = {}
        with ctx.progress.task("GUE generator (BOME)", total=p.epochs) as task:
            task.advance(start)
            for epoch in range(start, p.epochs):
                for idx in S.batches(len(x), p.batch_size, order_gen, drop_last=False):
                    idx = idx.to(dev)
                    if len(idx) < 2:  # BatchNorm needs two images
                        continue
                    last = self._bome_step(gen, cls, gen_opt, cls_opt, x[idx], y[idx])
                    task.update(**last)
                task.advance()
                S.save_checkpoint(ckpt, {
                    "cls": cls.state_dict(), "gen": gen.state_dict(), "gen_opt": gen_opt.state_dict(),
                    "cls_opt": cls_opt.state_dict(), "order_gen": order_gen.get_state(), "epoch": epoch + 1,
                })  # fmt: skip
        gen.eval()
        noise = torch.empty_like(x)
        with torch.no_grad():
            for idx in S.batches(len(x), p.batch_size, None, drop_last=False):
                idx = idx.to(dev)
                noise[idx] = self._poisoned(gen, x[idx]) - x[idx]
        self.facts = {k: round(v, 6) for k, v in last.items()}
        return noise
