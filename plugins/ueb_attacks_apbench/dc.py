"""DC: Deep Confusion (Feng, Cai, Zhou, NeurIPS 2019, "Learning to Confuse: Generating Training
Time Adversarial Data with Auto-Encoder"; code kingfengji/DeepConfuse, CIFAR script, as APBench
uses it at Linf 8/255).

A U-Net generator g maps each image x to x + eps * g(x) (g ends in tanh). Training alternates,
batch by batch, an update of g and of a classifier f that learns from g's data:
  * g: take f one functional SGD step on (x + eps * g(x), y), keeping the graph, and move g
    (Adam) to *raise* the cross-entropy of that updated f on the clean batch;
  * f: one SGD step on the data of a frozen copy of g (the generator of the previous outer
    epoch).
After `cls_epochs` passes, the frozen copy takes g's weights and f starts afresh. The official
script keeps the generator under which a freshly trained classifier does worst; here that
classifier is scored on the clean training images (the poisoner sees no test set).
Settings and sources: docs/poisoners-apbench.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from ueb_baselines import surrogate as S

from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .unet import UNet


class DeepConfusion(Poisoner):
    """Perturbations from an auto-encoder trained to confuse a classifier, Linf 8/255."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"surrogate": "fastnet", "epochs": 1, "cls_epochs": 4, "batch_size": 8,
                  "generator_width": 4, "select": "last"},
        "quick": {"surrogate": "fastnet", "epochs": 2, "cls_epochs": 1, "batch_size": 128,
                  "generator_width": 8, "select": "last"},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        epochs: int = bounded(1000, ge=1)  # generator epochs (outer loop)
        cls_epochs: int = bounded(20, ge=1)  # classifier passes per generator epoch
        batch_size: int = bounded(256, ge=1)
        lr: float = bounded(0.01, gt=0)  # the classifier's plain SGD, also the look-ahead step
        atk_lr: float = bounded(1e-4, gt=0)  # the generator's Adam
        generator_width: int = bounded(64, ge=1)
        select: Literal["best", "last"] = "best"
        surrogate: str = "vgg19"
        surrogate_width: int | None = bounded(None, ge=1)

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        rec = S.recipe(self, train, ctx)
        noise = S.cached_tensor(ctx, "dc-noise", rec, lambda ck: self._generate(train, ctx, ck))
        return (train.float01() + noise).clamp(0, 1)

    # ------------------------------------------------------------------------------ training

    def _classifier(self, ctx: RunContext, train: ImageSet, seed: int) -> nn.Module:
        p = self.params
        return S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, seed).train()

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed + 1)
            tgt = UNet(train.channels, p.generator_width).to(dev)
        atk = copy.deepcopy(tgt).eval()
        tgt_opt = torch.optim.Adam(tgt.parameters(), lr=p.atk_lr)
        order = torch.Generator().manual_seed(ctx.seed + 2)
        start, best_acc, best_state = 0, float("inf"), None
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            tgt.load_state_dict(state["tgt"])
            atk.load_state_dict(state["atk"])
            tgt_opt.load_state_dict(state["tgt_opt"])
            order.set_state(state["order"])
            start, best_acc, best_state = state["epoch"], state["best_acc"], state["best"]
        accs: list[float] = []
        with ctx.progress.task("DC generator", total=p.epochs) as task:
            task.advance(start)
            for epoch in range(start, p.epochs):
                cls = self._classifier(ctx, train, ctx.seed + 100 + 2 * epoch)
                cls_opt = torch.optim.SGD(cls.parameters(), lr=p.lr)
                for _ in range(p.cls_epochs):
                    for idx in S.batches(len(x), p.batch_size, order, drop_last=False):
                        idx = idx.to(dev)
                        self._generator_step(tgt, tgt_opt, cls, x[idx], y[idx])
                        self._classifier_step(atk, cls, cls_opt, x[idx], y[idx])
                atk.load_state_dict(tgt.state_dict())
                if p.select == "best":
                    acc = self._scratch_accuracy(
                        atk, ctx, train, x, y, order, ctx.seed + 101 + 2 * epoch
                    )
                    accs.append(acc)
                    if acc < best_acc:
                        best_acc = acc
                        best_state = copy.deepcopy(atk.state_dict())
                task.advance()
                S.save_checkpoint(
                    ckpt,
                    {"tgt": tgt.state_dict(), "atk": atk.state_dict(),
                     "tgt_opt": tgt_opt.state_dict(), "order": order.get_state(),
                     "epoch": epoch + 1, "best_acc": best_acc, "best": best_state},
                )  # fmt: skip
        if p.select == "best" and best_state is not None:
            atk.load_state_dict(best_state)
        noise = self._noise(atk, x, p.batch_size)
        self.facts = {
            "epochs": p.epochs,
            "selected": p.select,
            "scratch_clean_train_acc_selected": best_acc
            if accs or best_state is not None
            else None,
        }
        return noise

    def _generator_step(
        self, tgt: nn.Module, opt: torch.optim.Optimizer, cls: nn.Module, xb: torch.Tensor,
        yb: torch.Tensor,
    ) -> None:  # fmt: skip
        """Move g so that f, after one SGD step on g's data, errs more on the clean batch."""
        p = self.params
        tgt.train()
        poisoned = (xb + tgt(xb) * p.eps).clamp(0, 1)
        loss = F.cross_entropy(cls(poisoned), yb)
        names = [n for n, q in cls.named_parameters()]
        params = [q for q in cls.parameters()]
        grads = torch.autograd.grad(loss, params, create_graph=True)
        ahead = {n: q - p.lr * g for n, q, g in zip(names, params, grads, strict=True)}
        buffers = {
            n: b.clone() for n, b in cls.named_buffers()
        }  # the look-ahead leaves f's stats alone
        confusion = -F.cross_entropy(functional_call(cls, {**ahead, **buffers}, (xb,)), yb)
        opt.zero_grad(set_to_none=True)
        confusion.backward(inputs=list(tgt.parameters()))
        opt.step()

    def _classifier_step(
        self, atk: nn.Module, cls: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
        yb: torch.Tensor,
    ) -> None:  # fmt: skip
        with torch.no_grad():
            poisoned = (xb + atk(xb) * self.params.eps).clamp(0, 1)
        loss = F.cross_entropy(cls(poisoned), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def _scratch_accuracy(
        self, atk: nn.Module, ctx: RunContext, train: ImageSet, x: torch.Tensor, y: torch.Tensor,
        order: torch.Generator, seed: int,
    ) -> float:  # fmt: skip
        """Accuracy (%) on the clean training images of a classifier trained from scratch for
        `cls_epochs` on the generator's data."""
        p = self.params
        scratch = self._classifier(ctx, train, seed)
        opt = torch.optim.SGD(scratch.parameters(), lr=p.lr)
        for _ in range(p.cls_epochs):
            for idx in S.batches(len(x), p.batch_size, order, drop_last=False):
                idx = idx.to(x.device)
                self._classifier_step(atk, scratch, opt, x[idx], y[idx])
        return 100.0 * (1.0 - S.error_rate(scratch, x, y, p.batch_size))

    @torch.no_grad()
    def _noise(self, atk: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
        atk.eval()
        out = torch.empty_like(x)
        for i in range(0, len(x), batch):
            out[i : i + batch] = atk(x[i : i + batch]) * self.params.eps
        return out
