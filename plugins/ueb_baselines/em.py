"""EM: error-minimizing noise (Huang et al., ICLR 2021, "Unlearnable Examples").

Bi-level min-min optimisation, following HanxunH/Unlearnable-Examples (perturbation.py,
toolbox.py and scripts/cifar10/min-min-noise/*): a round trains the surrogate for `train_steps`
batches on the currently perturbed data, then updates the noise by PGD *descending* the
surrogate's loss, until the surrogate's error on the perturbed data falls below `stop_error`.
Sample-wise: one noise per image (indexed by the image's position, never by its label), every
image updated each round with 20 steps. Class-wise: one noise per class, 1 step per batch on a
stratified 20% subset, each class's noise set to the mean of its images' updated noise.
Settings and sources: docs/poisoners-surrogate.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from . import surrogate as S
from .pgd import pgd_linf


class ErrorMinimizing(Poisoner["ErrorMinimizing.Params"]):
    """Error-minimizing noise, sample-wise (`em`) or class-wise (`em-class`), Linf 8/255."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        mode: Literal["sample", "class"] = "sample"
        eps: float = bounded(8 / 255, gt=0, le=1)
        step_size: float = bounded(0.8 / 255, gt=0, le=1)
        steps: int | None = bounded(
            None, ge=1
        )  # None: the official 20 (sample-wise) or 1 (class-wise)
        train_steps: int = bounded(10, ge=1)  # surrogate SGD batches per round
        batch_size: int = bounded(512, ge=1)  # both the surrogate's and the noise update's batch
        stop_error: float = bounded(0.01, ge=0, le=1)
        max_rounds: int | None = bounded(
            None, ge=1
        )  # None: run until stop_error, as the official code does
        class_subset: float = bounded(
            0.2, gt=0, le=1
        )  # class-wise: fraction of each class the noise is fit on
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)
        lr: float = bounded(0.1, gt=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(5e-4, ge=0)
        grad_clip: float = bounded(5.0, ge=0)

        def __post_init__(self) -> None:
            if not 0 < self.class_subset <= 1:
                raise ValueError("class_subset must be in (0, 1]")
            if self.max_rounds is not None and self.max_rounds < 1:
                raise ValueError("max_rounds must be at least 1")

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    @property
    def pgd_steps(self) -> int:
        if self.params.steps is not None:
            return self.params.steps
        return 20 if self.params.mode == "sample" else 1

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self) -> bool:
        return self.params.mode == "sample"

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        if train.num_classes < 2:
            raise ConfigError("EM needs at least two classes", "use a dataset with several classes")
        rec = S.recipe(self, train, ctx, surrogate_classes=train.num_classes)
        noise = S.cached_tensor(ctx, "em-noise", rec, lambda ck: self._generate(train, ctx, ck))
        x = train.float01()
        per_image = noise if self.sample_wise else noise[train.labels]
        return (x + per_image).clamp(0, 1)

    # ------------------------------------------------------------------------------ search

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> torch.Tensor:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev)
        y = train.labels.to(dev)
        model = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        opt = S.sgd(model, p.lr, p.momentum, p.weight_decay)
        index_gen = torch.Generator().manual_seed(ctx.seed + 1)  # class-wise update order
        sample = p.mode == "sample"
        shape = (len(train),) if sample else (train.num_classes,)
        noise = torch.zeros(*shape, *x.shape[1:], device=dev)
        subset = (
            None
            if sample
            else self._class_subset(train, torch.Generator().manual_seed(ctx.seed + 2), dev)
        )
        # Sample-wise: the official loader is not shuffled; its training batches continue
        # through the data in order from round to round. Class-wise: shuffled, drop_last.
        stream_gen = None if sample else torch.Generator().manual_seed(ctx.seed + 3)
        stream = S.endless(len(train), p.batch_size, stream_gen, drop_last=not sample)
        start_round, err = 0, 1.0
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            noise = state["noise"]
            index_gen.set_state(state["index_gen"])
            start_round, err = state["round"], state["err"]
            for _ in range(state["consumed"]):
                next(stream)
        consumed = state["consumed"] if state is not None else 0

        desc = f"EM {p.mode}-wise noise"
        with ctx.progress.task(desc, total=p.max_rounds) as task:
            task.advance(start_round)
            rnd = start_round
            while err >= p.stop_error and (p.max_rounds is None or rnd < p.max_rounds):
                model.train()
                for _ in range(p.train_steps):
                    idx = next(stream).to(dev)
                    consumed += 1
                    self._train_step(model, opt, self._apply(x, y, noise, idx), y[idx])
                model.eval()
                if sample:
                    self._update_samplewise(model, x, y, noise)
                    err = S.error_rate(model, (x + noise).clamp(0, 1), y, p.batch_size)
                else:
                    assert subset is not None
                    self._update_classwise(model, x, y, noise, subset, index_gen)
                    xs = (x[subset] + noise[y[subset]]).clamp(0, 1)
                    err = S.error_rate(model, xs, y[subset], p.batch_size)
                rnd += 1
                task.update(error=err)
                task.advance()
                S.save_checkpoint(
                    ckpt,
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "noise": noise,
                        "index_gen": index_gen.get_state(),
                        "round": rnd,
                        "err": err,
                        "consumed": consumed,
                    },
                )
        self.facts = {"rounds": rnd, "surrogate_error": err, "converged": err < p.stop_error}
        if err >= p.stop_error:
            ctx.log(
                f"EM stopped after max_rounds={p.max_rounds} with surrogate error {err:.3f} (target < {p.stop_error})"
            )
        return noise

    def _apply(
        self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        per = noise[idx] if self.params.mode == "sample" else noise[y[idx]]
        return (x[idx] + per).clamp(0, 1)

    def _train_step(
        self, model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
    ) -> None:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.params.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.params.grad_clip)
        opt.step()

    def _min_min(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, start: torch.Tensor
    ) -> torch.Tensor:
        p = self.params
        return pgd_linf(
            lambda z: F.cross_entropy(model(z), yb),
            xb,
            start,
            p.eps,
            p.step_size,
            self.pgd_steps,
            descend=True,
        )

    def _update_samplewise(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
    ) -> None:
        # Every image, in order; each starts from its own current noise (warm start).
        for idx in S.batches(len(x), self.params.batch_size, None, drop_last=False):
            idx = idx.to(x.device)
            noise[idx] = self._min_min(model, x[idx], y[idx], noise[idx])

    def _update_classwise(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        subset: torch.Tensor,
        gen: torch.Generator,
    ) -> None:
        eps = self.params.eps
        for part in S.batches(len(subset), self.params.batch_size, gen, drop_last=True):
            idx = subset[part.to(subset.device)]
            yb = y[idx]
            eta = self._min_min(model, x[idx], yb, noise[yb])
            for k in yb.unique():
                noise[k] = eta[yb == k].mean(0).clamp(-eps, eps)

    def _class_subset(
        self, train: ImageSet, gen: torch.Generator, dev: torch.device
    ) -> torch.Tensor:
        """A stratified random `class_subset` fraction of the images (at least one per class)."""
        keep = []
        for c in range(train.num_classes):
            members = torch.nonzero(train.labels == c).flatten()
            if len(members) == 0:
                continue
            n = max(1, round(self.params.class_subset * len(members)))
            keep.append(members[torch.randperm(len(members), generator=gen)[:n]])
        return torch.sort(torch.cat(keep)).values.to(dev)
