"""PUE: provably unlearnable examples (Wang, Xue, Li, Camtepe, Zhu, NDSS 2025, "Provably
Unlearnable Data Examples"), with their certified (q, eta)-learnability.

Follows NeuralSec/certified-data-learnability (make_pue.py, make_pue.sh, toolbox.py
`min_min_attack_robust`, trainer.py `train_batch_robust`, certify.py, certify.sh). Class-wise
error-minimising noise as EM's class-wise search (rounds of `train_steps` surrogate batches,
then one PGD pass over a stratified 20% subset, each class's noise the mean of its images'
updates, until the surrogate's error on the perturbed subset falls below `stop_error`), made
robust to random *weight* perturbations once the surrogate fits the perturbed subset better than
chance (accuracy above 50%): each surrogate batch then takes one optimiser step per noise level
j * `robust_noise_step` (j = 0 .. robust_noise / robust_noise_step), each averaging the gradient
over `weight_draws` Gaussian draws of the weights at that level; each noise update likewise makes
one signed step per level, averaging over `perturb_draws` draws.

The certification (`report()`): the trained surrogate's accuracy under `cert_draws` Gaussian
perturbations of its parameters (std `cert_sigma`) gives, for each eta in `cert_etas`, an upper
bound on the `cert_q`-quantile of the accuracy of every classifier within L2 distance eta of it
(ueb_attacks_modern.certification). The official code measures the accuracy on the clean test
set, which a poisoner never sees; here it is measured on the clean training images. Sources:
docs/poisoners-modern.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from ueb_baselines import surrogate as S

from ueb.atomic import save_torch
from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Budget, Poisoner, Requirement, RunContext
from ueb.params import bounded

from .certification import certify, smoothed_accuracies

OFFICIAL_ETAS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
                 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0)  # fmt: skip


class WeightNoise:
    """Adds Gaussian noise of a given scale to every parameter for the body of a `with`."""

    def __init__(self, model: nn.Module, scale: float, gen: torch.Generator) -> None:
        self.params = list(model.parameters())
        self.scale, self.gen = scale, gen
        self.noise: list[torch.Tensor] = []

    def __enter__(self) -> WeightNoise:
        if self.scale == 0:  # the noiseless level: nothing to add
            return self
        with torch.no_grad():
            for p in self.params:
                z = (
                    torch.randn(p.shape, generator=self.gen, device=self.gen.device).to(p)
                    * self.scale
                )
                p.add_(z)
                self.noise.append(z)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.noise:
            return
        with torch.no_grad():
            for p, z in zip(self.params, self.noise, strict=True):
                p.sub_(z)


class ProvablyUnlearnable(Poisoner):
    """PUE: class-wise error-minimising noise robust to weight noise, Linf 8/255, plus its certificate."""

    version = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"surrogate": "fastnet", "train_steps": 2, "batch_size": 40, "max_rounds": 2, "robust_noise": 0.05,
                  "weight_draws": 2, "perturb_draws": 2, "cert_draws": 50},
        "quick": {"surrogate": "fastnet", "train_steps": 10, "max_rounds": 4, "robust_noise": 0.1,
                  "weight_draws": 2, "perturb_draws": 2, "cert_draws": 50},
    }  # fmt: skip

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)
        step_size: float = bounded(0.8 / 255, gt=0, le=1)
        steps: int = bounded(1, ge=1)
        train_steps: int = bounded(20, ge=1)  # surrogate batches per round
        batch_size: int = bounded(128, ge=1)
        stop_error: float = bounded(0.1, ge=0, le=1)
        max_rounds: int | None = bounded(None, ge=1)  # None: until stop_error, as the official code
        class_subset: float = bounded(0.2, gt=0, le=1)
        robust_noise: float = bounded(0.25, ge=0)  # largest weight-noise std
        robust_noise_step: float = bounded(0.05, gt=0)
        weight_draws: int = bounded(100, ge=1)  # draws per level in a surrogate step
        perturb_draws: int = bounded(10, ge=1)  # draws per level in a noise step (u_p)
        lr: float = bounded(0.1, gt=0)
        momentum: float = bounded(0.9, ge=0, lt=1)
        weight_decay: float = bounded(5e-4, ge=0)
        grad_clip: float = bounded(5.0, ge=0)
        cert_sigma: float = bounded(0.25, gt=0)
        cert_q: float = bounded(0.9, gt=0, lt=1)
        cert_draws: int = bounded(1000, ge=1)
        cert_confidence: float = bounded(0.99, gt=0, lt=1)
        cert_etas: tuple[float, ...] = bounded(OFFICIAL_ETAS, gt=0)
        surrogate: str = "resnet18"
        surrogate_width: int | None = bounded(None, ge=1)

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self.facts: dict[str, object] = {}

    @property
    def levels(self) -> list[float]:
        """Weight-noise scales of the robust steps: j * step for j = 0 .. robust_noise / step."""
        p = self.params
        count = int(p.robust_noise / p.robust_noise_step) + 1  # the official int() truncation
        return [p.robust_noise_step * j for j in range(count)]

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self) -> bool:
        return False

    def report(self) -> dict[str, object]:
        return dict(self.facts)

    def requires(self) -> list[Requirement]:
        return [S.surrogate_requirement(self.params)]

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        if train.num_classes < 2:
            raise ConfigError(
                "PUE needs at least two classes", "use a dataset with several classes"
            )
        rec = S.recipe(self, train, ctx)
        art = ctx.artifacts.get("pue-noise", rec)
        out = art.path / "result.pt"
        if art.done and out.exists():
            result = torch.load(out, map_location="cpu", weights_only=False)
        else:
            ckpt = art.path / "checkpoints"
            ckpt.mkdir(parents=True, exist_ok=True)
            result = self._generate(train, ctx, ckpt)
            save_torch(result, out, what="the pue-noise artifact")
            ctx.artifacts.finish(art)
        self.facts = dict(result["facts"])
        return (train.float01() + result["noise"][train.labels]).clamp(0, 1)

    # ----------------------------------------------------------------------------- pieces

    def robust_step(self, model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
                    gen: torch.Generator) -> None:  # fmt: skip
        """One optimiser step per weight-noise level, each on the mean loss over `weight_draws` draws."""
        p = self.params
        total = len(self.levels) * p.weight_draws
        for scale in self.levels:
            opt.zero_grad(set_to_none=True)
            for _ in range(p.weight_draws):
                with WeightNoise(model, scale, gen):
                    (F.cross_entropy(model(xb), yb) / total).backward()
                    if p.grad_clip > 0:  # the official code clips the running sum after every draw
                        nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()

    def plain_step(
        self, model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
    ) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        if self.params.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.params.grad_clip)
        opt.step()

    def noise_update(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, start: torch.Tensor,
                     robust: bool, gen: torch.Generator) -> torch.Tensor:  # fmt: skip
        """Error-minimising PGD from `start`; robust: one signed step per weight-noise level."""
        p = self.params
        delta = start.clone()
        for _ in range(p.steps):
            for scale in self.levels if robust else [0.0]:
                z = (xb + delta).clamp(0, 1).requires_grad_(True)
                grad = torch.zeros_like(z)
                for _ in range(p.perturb_draws if robust else 1):
                    with WeightNoise(model, scale, gen):
                        (g,) = torch.autograd.grad(F.cross_entropy(model(z), yb), [z])
                    grad += g
                with torch.no_grad():  # eta as the official code returns it: clipped to eps only
                    delta = ((z - p.step_size * grad.sign()) - xb).clamp(-p.eps, p.eps)
        return delta

    # ----------------------------------------------------------------------------- search

    def _generate(self, train: ImageSet, ctx: RunContext, ckpt: Path) -> dict[str, Any]:
        p = self.params
        dev = S.device_of(ctx)
        x = train.float01().to(dev).float()
        y = train.labels.to(dev)
        model = S.build_surrogate(ctx, p.surrogate, p.surrogate_width, train, ctx.seed)
        opt = S.sgd(model, p.lr, p.momentum, p.weight_decay)
        weight_gen = S.generator(ctx.seed + 1, dev)
        subset = _stratified(
            train.labels, p.class_subset, torch.Generator().manual_seed(ctx.seed + 2)
        ).to(dev)
        order_gen = torch.Generator().manual_seed(ctx.seed + 3)
        stream = S.endless(
            len(x), p.batch_size, torch.Generator().manual_seed(ctx.seed + 4), drop_last=True
        )
        noise = torch.zeros(train.num_classes, *x.shape[1:], device=dev)
        rnd, err, robust, consumed = 0, 1.0, False, 0
        state = S.load_checkpoint(ckpt, dev)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            noise, rnd, err, robust = state["noise"], state["round"], state["err"], state["robust"]
            weight_gen.set_state(state["weight_gen"].cpu())
            order_gen.set_state(state["order_gen"])
            for _ in range(state["consumed"]):
                next(stream)
            consumed = state["consumed"]
        with ctx.progress.task("PUE surrogate + noise", total=p.max_rounds) as task:
            task.advance(rnd)
            while err >= p.stop_error and (p.max_rounds is None or rnd < p.max_rounds):
                model.train()
                for _ in range(p.train_steps):
                    idx = next(stream).to(dev)
                    consumed += 1
                    xb = (x[idx] + noise[y[idx]]).clamp(0, 1)
                    if robust:
                        self.robust_step(model, opt, xb, y[idx], weight_gen)
                    else:
                        self.plain_step(model, opt, xb, y[idx])
                model.eval()
                model.requires_grad_(False)
                for part in S.batches(len(subset), p.batch_size, order_gen, drop_last=True):
                    idx = subset[part.to(dev)]
                    yb = y[idx]
                    eta = self.noise_update(model, x[idx], yb, noise[yb], robust, weight_gen)
                    for k in yb.unique():
                        noise[k] = eta[yb == k].mean(0).clamp(-p.eps, p.eps)
                model.requires_grad_(True)
                err = S.error_rate(
                    model, (x[subset] + noise[y[subset]]).clamp(0, 1), y[subset], p.batch_size
                )
                robust = robust or (1 - err) > 0.5
                rnd += 1
                task.update(error=err, robust=robust)
                task.advance()
                S.save_checkpoint(ckpt, {
                    "model": model.state_dict(), "opt": opt.state_dict(), "noise": noise, "round": rnd,
                    "err": err, "robust": robust, "weight_gen": weight_gen.get_state(),
                    "order_gen": order_gen.get_state(), "consumed": consumed,
                })  # fmt: skip
        facts = {"rounds": rnd, "surrogate_error": round(err, 6), "converged": err < p.stop_error,
                 "robust_training": robust, **self._certificate(model, x, y, ctx)}  # fmt: skip
        return {"noise": noise.detach().cpu(), "facts": facts}

    def _certificate(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RunContext
    ) -> dict[str, Any]:
        p = self.params
        model.eval()

        def accuracy(m: nn.Module) -> float:
            return 100.0 * (1.0 - S.error_rate(m, x, y, max(p.batch_size, 256)))

        base = accuracy(model)
        gen = S.generator(ctx.seed + 5, S.device_of(ctx))
        scores = smoothed_accuracies(model, accuracy, p.cert_sigma, p.cert_draws, gen)
        bounds = certify(scores, p.cert_q, p.cert_etas, p.cert_sigma, p.cert_confidence)
        return {
            "certified_learnability": {k: (None if v is None else round(v, 4)) for k, v in bounds.items()},
            "certification": {"q": p.cert_q, "sigma": p.cert_sigma, "draws": p.cert_draws,
                              "confidence": p.cert_confidence, "measured_on": "clean training images",
                              "surrogate_accuracy": round(base, 4),
                              "smoothed_mean_accuracy": round(sum(scores) / len(scores), 4)},
        }  # fmt: skip


def _stratified(labels: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A stratified random `fraction` of the indices (at least one per class), sorted."""
    keep = []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        n = max(1, round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=gen)[:n]])
    return torch.sort(torch.cat(keep)).values
