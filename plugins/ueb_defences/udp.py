"""UDP's defence: stronger data augmentation on poisons plus adversarial noise (SDA + AN).

Method: Zhu, Yu and Gao, "Detection and Defense of Unlearnable Examples" (AAAI 2024, arXiv
2312.08898); official code hala64/udp (`sdaan.py`: `denoise`, `denoise_aug`; `utils.py`:
`PGD_attack`, `train`; `generate_poisoned_dataset/args.py` for the defaults). Three steps:

1. a two-layer network (input -> input -> classes, ReLU; `model/MLP.py: two_layer_NN`) is
   adversarially trained on the poisoned set: 100 epochs at batch 128, SGD lr 0.01, momentum
   0.9, weight decay 5e-4, lr x0.1 after epochs 75 and 90, every batch replaced by its PGD
   adversary (L-inf 8/255, 10 steps of 2/255, no random start);
2. every poisoned image gets that network's PGD adversarial noise (8/255, 10 steps of 1/255,
   no random start), added and stored on the 8-bit grid by truncation (`astype(np.uint8)`);
3. the victim trains on the result with the stronger augmentation of strength s = 1: random
   resized crop of scale (1 - 0.9 s, 1), horizontal flip, colour jitter (0.4 s, 0.4 s, 0.4 s,
   0.1 s) with probability 0.8 s, grayscale with probability 0.2 s.

Steps 1 and 2 depend on the poisoned set and the seed only, so their result is an artifact
shared by every victim of the cell's poison. The official noise is computed on the poisoned
images and added to the clean ones together with the poison (clipped once); here it is added
to the poisoned images as the run holds them. Step 3 runs after the trainer's own crop and
flip (the official pipeline replaces them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from ueb_countermeasures_modern._rng import global_rng_from

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
from ueb.params import as_dict, bounded
from ueb.training import resolve_device


class TwoLayerNet(nn.Module):
    """Flatten, Linear(d, hidden), ReLU, Linear(hidden, classes): the official detector-sized net."""

    def __init__(self, input_dims: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(input_dims, hidden)
        self.linear2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(x.flatten(1))))


def pgd_linf(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float
) -> torch.Tensor:
    """Untargeted L-inf PGD from the image itself (no random start), clipped to [0, 1]."""
    was_training = model.training
    model.eval()
    adv = x.detach().clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, [adv])
        adv = adv.detach() + step_size * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return adv.detach()


def _epoch_batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of shuffled index batches, the last one partial (a DataLoader's default)."""
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch):
        yield perm[i : i + batch]


class UdpSda(Countermeasure):
    """UDP (Zhu et al., AAAI 2024): adversarial noise of an adversarially trained 2-layer net, then stronger augmentation."""

    stage: ClassVar[Stage] = "protocol"
    threat: ClassVar[ThreatModel] = ThreatModel()
    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"net_epochs": 1, "net_hidden": 32, "net_train_steps": 2},
        "quick": {"net_epochs": 5, "net_hidden": 512},
    }

    @dataclass(frozen=True)
    class Params:
        strength: float = bounded(1.0, ge=0, le=1)
        eps: float = bounded(8 / 255, ge=0, le=1)
        # the two-layer network's adversarial training
        net_hidden: int = bounded(0, ge=0)  # 0: as wide as its input (official)
        net_epochs: int = bounded(100, ge=1)
        net_batch_size: int = bounded(128, ge=1)
        net_lr: float = bounded(0.01, gt=0)
        net_momentum: float = bounded(0.9, ge=0, lt=1)
        net_weight_decay: float = bounded(5e-4, ge=0)
        net_milestones: tuple[float, ...] = bounded(
            (0.75, 0.9), gt=0, le=1
        )  # fractions of net_epochs
        net_train_steps: int = bounded(10, ge=0)
        net_train_step_size: float = bounded(2 / 255, gt=0)
        # the noise added to every training image
        noise_steps: int = bounded(10, ge=0)
        noise_step_size: float = bounded(1 / 255, gt=0)

    def __init__(self, params: Any = None, name: str | None = None) -> None:
        super().__init__(params, name)
        self._policy: nn.Module | None = None

    # -- steps 1 and 2: adversarial noise ---------------------------------------------------

    def train_net(self, train: ImageSet, ctx: RunContext, device: torch.device) -> TwoLayerNet:
        p = self.params
        dims = train.channels * train.image_size**2
        gen = torch.Generator().manual_seed(ctx.seed + 6151)
        with global_rng_from(gen):
            net = TwoLayerNet(dims, p.net_hidden or dims, train.num_classes).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=p.net_lr, momentum=p.net_momentum,
                              weight_decay=p.net_weight_decay)  # fmt: skip
        milestones = sorted({max(1, round(m * p.net_epochs)) for m in p.net_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        images, labels = train.float01().to(device), train.labels.to(device)
        with ctx.progress.task(
            f"{self.name}: adversarial training of the 2-layer net", total=p.net_epochs
        ) as task:
            for _ in range(p.net_epochs):
                for idx in _epoch_batches(len(train), p.net_batch_size, gen):
                    x, y = images[idx.to(device)], labels[idx.to(device)]
                    x = pgd_linf(net, x, y, p.eps, p.net_train_steps, p.net_train_step_size)
                    net.train()
                    loss = F.cross_entropy(net(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                sched.step()
                task.advance()
        return net

    def noisy_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        """The poisoned set plus the 2-layer net's adversarial noise, on the 8-bit grid (cached)."""
        from ueb.atomic import save_torch

        p = self.params
        recipe = {"what": "udp-noise", "version": self.version, "data": train.fingerprint(),
                  "seed": ctx.seed, "params": as_dict(p)}  # fmt: skip
        with ctx.artifacts.get("udp-noise", recipe) as art:
            target = art.path / "images.pt"
            if not art.done:
                device = resolve_device(ctx.device)
                net = self.train_net(train, ctx, device)
                x = train.float01()
                out = torch.empty(x.shape, dtype=torch.uint8)
                step = max(1, p.net_batch_size)
                for i in range(0, len(train), step):
                    xb = x[i : i + step].to(device)
                    yb = train.labels[i : i + step].to(device)
                    adv = pgd_linf(net, xb, yb, p.eps, p.noise_steps, p.noise_step_size)
                    levels = (xb * 255).round() + (adv - xb) * 255
                    out[i : i + step] = levels.clamp(0, 255).floor().to(torch.uint8).cpu()
                save_torch(out, target, what="UDP's noisy training set")
                ctx.artifacts.finish(art, images=len(train))
            images = torch.load(target, weights_only=True)
        return train.with_images(images, countermeasure=self.name)

    # -- step 3: stronger augmentation ----------------------------------------------------

    def policy(self, size: int) -> nn.Module:
        if self._policy is None:
            import kornia.augmentation as K

            s = self.params.strength
            self._policy = K.AugmentationSequential(
                K.RandomResizedCrop((size, size), scale=(1 - 0.9 * s, 1.0)),
                K.RandomHorizontalFlip(p=0.5),
                K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=0.8 * s),
                K.RandomGrayscale(p=0.2 * s),
            )
        return self._policy

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        if self.params.strength == 0:  # the official s = 0 is the standard crop and flip
            return batch
        x = batch.x
        grey = x.shape[1] == 1
        xin = x.expand(-1, 3, -1, -1) if grey else x
        policy = self.policy(x.shape[-1])
        with (
            torch.no_grad(),
            torch.autocast(x.device.type, enabled=False),
            global_rng_from(step.generator),
        ):
            out = policy(xin.float())
        if grey:
            out = out.mean(1, keepdim=True)
        return Batch(out.clamp(0, 1).to(x.dtype), batch.y, batch.y2, batch.lam)

    # -- the protocol ---------------------------------------------------------------------

    def fit(
        self, model: nn.Module, train: ImageSet, test: ImageSet, trainer: Fitter, ctx: RunContext
    ) -> TrainResult:
        noisy = self.noisy_set(train, ctx)
        return trainer.fit(
            model, noisy, test, hooks=self, description=f"{self.name}: stronger augmentation"
        )
