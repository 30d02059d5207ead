"""The victim's training loop: SGD on device-resident uint8 data, batched augmentation.

Countermeasures act through `hooks` (a Countermeasure): `augment(batch, step)` after the base
crop+flip, and `loss(model, batch, step)` for the step's objective. The trainer never knows
a countermeasure by name.

Speed: the training set lives on the device as uint8 and is augmented there in whole batches
(no per-image Python); on CUDA, bf16 autocast and channels_last; evaluation in large batches.
Determinism: all sampling comes from generators seeded by `seed`, so a CPU run repeats
exactly.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.interfaces import Batch, StepContext, TrainResult
from ueb.profile import TrainingConfig
from ueb.progress import Progress, silent

if TYPE_CHECKING:
    from ueb.interfaces import Countermeasure


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator
) -> torch.Tensor:
    """Pad-and-crop plus horizontal flip for a whole batch at once (zero padding)."""
    b, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[bi, ci, rows, cols]
    if flip:
        mask = torch.rand(b, generator=gen, device=gen.device).to(x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class _Vanilla:
    """Hooks that change nothing: plain supervised training."""

    def augment(self, batch: Batch, step: StepContext) -> Batch:
        return batch

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        return batch.loss(model(batch.x))


class Trainer:
    def __init__(
        self,
        cfg: TrainingConfig,
        device: str | torch.device | None = None,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(str(device) if device is not None else None)
        self.seed = seed
        self.progress = progress or silent()

    # -- helpers ----------------------------------------------------------------------------

    @property
    def use_bf16(self) -> bool:
        if self.cfg.precision == "bf16":
            return True
        return self.cfg.precision == "auto" and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.cfg.channels_last and self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model

    def optimizer(self, params: list[torch.nn.Parameter] | object) -> tuple[torch.optim.Optimizer, object]:
        cfg = self.cfg
        opt = torch.optim.SGD(
            params,  # type: ignore[arg-type]
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
        return opt, sched

    def batches(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Endless stream of index batches: a fresh permutation each epoch, last partial batch dropped."""
        bs = min(self.cfg.batch_size, n)
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - bs + 1, bs):
                yield perm[i : i + bs]

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test: ImageSet) -> float:
        """Top-1 accuracy in % on `test`."""
        was_training = model.training
        model.eval()
        images = test.images.to(self.device)
        labels = test.labels.to(self.device)
        correct = 0
        for i in range(0, len(test), self.cfg.eval_batch_size):
            x = _to_float(images[i : i + self.cfg.eval_batch_size])
            if self.cfg.channels_last and self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                logits = model(x)
            correct += int((logits.argmax(1) == labels[i : i + self.cfg.eval_batch_size]).sum())
        model.train(was_training)
        return 100.0 * correct / max(1, len(test))

    # -- training -------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        train: ImageSet,
        test: ImageSet,
        hooks: Countermeasure | _Vanilla | None = None,
        description: str = "training",
    ) -> TrainResult:
        cfg = self.cfg
        hooks = hooks or _Vanilla()
        model = self.prepare_model(model)
        opt, sched = self.optimizer(model.parameters())
        cpu_gen = torch.Generator().manual_seed(self.seed)
        dev_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        images = train.images.to(self.device)
        labels = train.labels.to(self.device)
        stream = self.batches(len(train), cpu_gen)
        history: list[dict[str, float]] = []
        peak, peak_step, acc = -1.0, 0, 0.0
        start = time.perf_counter()
        model.train()
        with self.progress.task(description, total=cfg.iterations) as task:
            for step in range(cfg.iterations):
                idx = next(stream).to(self.device)
                x = random_crop_flip(_to_float(images[idx]), cfg.crop_padding, cfg.flip, dev_gen)
                if cfg.channels_last and self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                ctx = StepContext(step, cfg.iterations, dev_gen, model)
                batch = hooks.augment(Batch(x, labels[idx]), ctx)
                with self.autocast():
                    loss = hooks.loss(model, batch, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()  # type: ignore[attr-defined]
                last = step + 1 == cfg.iterations
                if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
                    acc = self.evaluate(model, test)
                    history.append({"step": step + 1, "acc": acc, "loss": float(loss.detach())})
                    if acc > peak:
                        peak, peak_step = acc, step + 1
                    task.update(loss=float(loss.detach()), acc=acc)
                task.advance()
        seconds = time.perf_counter() - start
        return TrainResult(
            final_acc=acc,
            peak_acc=max(peak, acc),
            peak_step=peak_step,
            iterations=cfg.iterations,
            seconds=seconds,
            history=history,
            extra={"images_per_s": cfg.iterations * cfg.batch_size / max(seconds, 1e-9)},
        )


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
