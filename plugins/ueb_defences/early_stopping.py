"""Early stopping that a defender can run: decided on a held-out part of the training data.

Motivation: Sandoval-Segura et al. report that poisons lose much of their effect when
training stops early ("Poisons that are learned faster are more effective", CVPR-W 2022,
arXiv 2204.08615, which argues for reporting peak test accuracy; "Autoregressive
Perturbations for Data Poisoning", NeurIPS 2022; "What Can We Learn from Unlearnable
Datasets?", NeurIPS 2023). Peak test accuracy needs clean test labels, which an unauthorised
trainer does not have; this protocol only uses the (poisoned) training set.

Rule (validation-based early stopping with patience, Prechelt 1998, "Early stopping - but
when?"; Goodfellow et al. 2016, Deep Learning, Algorithm 7.1): hold out a stratified
`holdout_fraction` of the training set (positions from the run seed), train on the rest with
the run's protocol, measure the held-out accuracy (or loss) every `check_every` steps (0: one
epoch of the fit part), and stop after `patience` checks without an improvement larger than
`min_delta`, or at the protocol's last step. The weights of the best check are restored and
evaluated once on the test set. Held-out images carry the same perturbations as the rest, so
on a shortcut poison the held-out accuracy saturates within a few epochs and the rule stops
while the network is still learning from the images themselves; on clean data it keeps
improving and training runs longer.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import (
    Batch,
    Countermeasure,
    Fitter,
    RunContext,
    Stage,
    StepContext,
    ThreatModel,
    TrainResult,
)
from ueb.params import bounded
from ueb.training import random_crop_flip

from .holdout import holdout_split


@torch.no_grad()
def held_out_metrics(model: nn.Module, held: ImageSet, trainer: Fitter) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of `model` on `held`."""
    was_training = model.training
    model.eval()
    images = held.images.to(trainer.device)
    labels = held.labels.to(trainer.device)
    correct, loss_sum = 0, 0.0
    step = trainer.cfg.eval_batch_size
    for i in range(0, len(images), step):
        x = images[i : i + step]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        with trainer.autocast():
            logits = model(x).float()
        y = labels[i : i + step]
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train(was_training)
    n = max(1, len(images))
    return 100.0 * correct / n, loss_sum / n


class EarlyStopping(Countermeasure):
    """Stop when the held-out part of the training data stops improving; restore the best weights."""

    stage: ClassVar[Stage] = "protocol"
    threat: ClassVar[ThreatModel] = ThreatModel()
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"patience": 2},
        "quick": {"patience": 5},
    }

    @dataclass(frozen=True)
    class Params:
        holdout_fraction: float = bounded(0.1, gt=0, lt=1)
        monitor: Literal["accuracy", "loss"] = "accuracy"
        check_every: int = bounded(0, ge=0)  # steps between checks; 0: one epoch of the fit part
        patience: int = bounded(10, ge=1)  # checks without improvement before stopping
        min_delta: float = bounded(0.0, ge=0)  # accuracy points, or loss units
        restore_best: bool = True

    def interval(self, n_fit: int, trainer: Fitter) -> int:
        if self.params.check_every > 0:
            return self.params.check_every
        return max(1, n_fit // max(1, min(trainer.cfg.batch_size, n_fit)))

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> TrainResult:
        p = self.params
        cfg = trainer.cfg
        start = time.perf_counter()
        fit_part, held = holdout_split(train, p.holdout_fraction, ctx.seed + 4241)
        if len(held) == 0:
            raise ConfigError(
                f"{self.name}: no class has two training images, so nothing can be held out",
                "train on at least two images per class",
            )
        model = trainer.prepare_model(model)
        opt, sched = trainer.optimizer(model.parameters())
        cpu_gen = torch.Generator().manual_seed(trainer.seed)
        dev_gen = torch.Generator(device=trainer.device).manual_seed(trainer.seed + 1)
        images = fit_part.images.to(trainer.device)
        labels = fit_part.labels.to(trainer.device)
        stream = trainer.batches(len(fit_part), cpu_gen)
        every = self.interval(len(fit_part), trainer)
        sign = 1.0 if p.monitor == "accuracy" else -1.0
        best_score, best_step, best_state = float("-inf"), 0, copy.deepcopy(model.state_dict())
        stale, done = 0, 0
        history: list[dict[str, float]] = []
        model.train()
        with ctx.progress.task(
            f"{self.name}: training with a held-out check", total=cfg.iterations
        ) as task:
            for step in range(cfg.iterations):
                idx = next(stream).to(trainer.device)
                x = random_crop_flip(images[idx], cfg.crop_padding, cfg.flip, dev_gen)
                x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
                batch = Batch(x, labels[idx])
                with trainer.autocast():
                    loss = self.loss(
                        model, batch, StepContext(step, cfg.iterations, dev_gen, model)
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()  # type: ignore[attr-defined]
                done = step + 1
                task.advance()
                if done % every and done != cfg.iterations:
                    continue
                acc, held_loss = held_out_metrics(model, held, trainer)
                history.append({"step": done, "heldout_acc": acc, "heldout_loss": held_loss,
                                "loss": float(loss.detach())})  # fmt: skip
                score = sign * (acc if p.monitor == "accuracy" else held_loss)
                if score > best_score + p.min_delta:
                    best_score, best_step, stale = score, done, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                task.update(heldout_acc=acc)
                if stale >= p.patience:
                    break
        stopped_at = done
        if p.restore_best:
            model.load_state_dict(best_state)
        chosen = best_step if p.restore_best else stopped_at
        acc = trainer.evaluate(model, test)
        history.append({"step": chosen, "acc": acc})
        return TrainResult(
            final_acc=acc,
            peak_acc=acc,
            peak_step=chosen,
            iterations=stopped_at,
            seconds=time.perf_counter() - start,
            history=history,
            extra={
                "chosen_step": chosen,
                "stopped_at": stopped_at,
                "stopped_early": stopped_at < cfg.iterations,
                "max_steps": cfg.iterations,
                "check_every": every,
                "fit_images": len(fit_part),
                "heldout_images": len(held),
                "protocol": trainer.protocol(),
            },
        )
