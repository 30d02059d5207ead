"""The victim's training loop: SGD on device-resident uint8 data, batched augmentation.

Countermeasures act through `hooks` (a Countermeasure, or any ueb.training_types.StepHooks): `augment(batch, step)` after the base
crop+flip, and `loss(model, batch, step)` for the step's objective. The trainer never knows
a countermeasure by name.

Speed: the training set lives on the device as uint8 and is cropped and flipped there in
whole batches while still uint8 (no per-image Python, a quarter of the memory traffic); the
loop never waits for the device except at evaluation (no per-step `.item()`); channels_last
(CPU and CUDA); on CUDA, bf16 autocast and optionally `torch.compile`.
Determinism: all sampling comes from generators seeded by `seed`, so a CPU run repeats
exactly. docs/training.md lists the protocol choices the paper leaves open.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ueb.imageset import ImageSet
from ueb.profile import TrainingConfig
from ueb.progress import Progress, silent
from ueb.training_types import Batch, StepContext, StepHooks, TrainResult


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator
) -> torch.Tensor:
    """Zero-pad by `padding`, crop back at a random offset per image, flip half: one batch at once.

    Works on any dtype (the trainer crops uint8 before converting). The crop is two gathers
    (rows, then columns) with broadcast indices, cheaper than one 4-D fancy index.
    """
    b, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=gen.device).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        padded = padded.gather(2, rows.expand(b, c, h, w + 2 * padding))
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded.gather(3, cols.expand(b, c, h, w))
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
        self._channels_last = self._channels_last_here()

    # -- helpers ----------------------------------------------------------------------------

    @property
    def use_bf16(self) -> bool:
        if self.cfg.precision == "bf16":
            return True
        return self.cfg.precision == "auto" and self.device.type == "cuda"

    @property
    def use_channels_last(self) -> bool:
        return self._channels_last

    def _channels_last_here(self) -> bool:
        """Faster on CPUs and GPUs alike; used where ueb.numerics.channels_last_safe says
        (CUDA, AVX-512 CPUs), also for trainings a plugin configures itself."""
        if not self.cfg.channels_last:
            return False
        from ueb.numerics import accelerator_of, channels_last_safe, kernel_environment

        kind = self.device.type
        if kind not in ("cpu", "cuda"):
            return False
        return channels_last_safe(
            kind, accelerator_of(kind, str(self.device)), kernel_environment()
        )

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.use_channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def optimizer(
        self, params: list[torch.nn.Parameter] | object
    ) -> tuple[torch.optim.Optimizer, object]:
        """SGD with momentum and weight decay, and a schedule counted in iterations."""
        cfg = self.cfg
        opt = torch.optim.SGD(
            params,  # type: ignore[arg-type]
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        sched: object
        if cfg.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=cfg.iterations, eta_min=0.0
            )
        else:
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=list(cfg.milestones), gamma=cfg.gamma
            )
        return opt, sched

    def batches(self, n: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        """Endless stream of index batches: a fresh permutation each epoch, last partial batch dropped."""
        bs = min(self.cfg.batch_size, n)
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - bs + 1, bs):
                yield perm[i : i + bs]

    def protocol(self) -> dict[str, Any]:
        """The settings a result depends on, stored with it (TrainResult.extra['protocol'])."""
        from ueb.params import as_dict

        return {
            **as_dict(self.cfg),
            "device": str(self.device),
            "bf16": self.use_bf16,
            "channels_last_used": self.use_channels_last,
            "compiled": self._compile_used(),
            "crop_fill": "zeros",
            "drop_last": True,
            "schedule_unit": "iteration",
            "seed": self.seed,
            "torch": torch.__version__,
        }

    def _compile_used(self) -> bool:
        return bool(self.cfg.compile) and self.device.type == "cuda"

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test: ImageSet) -> float:
        """Top-1 accuracy in % on `test`."""
        return self._evaluate(model, test.images.to(self.device), test.labels.to(self.device))

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        was_training = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        step = self.cfg.eval_batch_size
        for i in range(0, len(images), step):
            x = _to_float(images[i : i + step])
            if self.use_channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                logits = model(x)
            correct += (logits.argmax(1) == labels[i : i + step]).sum()
        model.train(was_training)
        return 100.0 * int(correct) / max(1, len(images))

    # -- training -------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        train: ImageSet,
        test: ImageSet,
        hooks: StepHooks | None = None,
        description: str = "training",
    ) -> TrainResult:
        """Train `model` in place for cfg.iterations steps; accuracy on `test` every eval_every."""
        cfg = self.cfg
        hooks = hooks or _Vanilla()
        model = self.prepare_model(model)
        opt, sched = self.optimizer(model.parameters())
        net: nn.Module = torch.compile(model) if self._compile_used() else model  # type: ignore[assignment]
        cpu_gen = torch.Generator().manual_seed(self.seed)
        dev_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        images = train.images.to(self.device)
        labels = train.labels.to(self.device)
        test_images = test.images.to(self.device)
        test_labels = test.labels.to(self.device)
        stream = self.batches(len(train), cpu_gen)
        history: list[dict[str, float]] = []
        peak, peak_step, acc = -1.0, 0, 0.0
        start = time.perf_counter()
        eval_seconds = 0.0
        model.train()
        with self.progress.task(description, total=cfg.iterations) as task:
            for step in range(cfg.iterations):
                idx = next(stream).to(self.device, non_blocking=True)
                x = _to_float(random_crop_flip(images[idx], cfg.crop_padding, cfg.flip, dev_gen))
                if self.use_channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                ctx = StepContext(step, cfg.iterations, dev_gen, net)
                batch = hooks.augment(Batch(x, labels[idx]), ctx)
                with self.autocast():
                    loss = hooks.loss(net, batch, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()  # type: ignore[attr-defined]
                done = step + 1
                if done == cfg.iterations or (cfg.eval_every > 0 and done % cfg.eval_every == 0):
                    t0 = time.perf_counter()
                    acc = self._evaluate(net, test_images, test_labels)
                    eval_seconds += time.perf_counter() - t0
                    last_loss = float(loss.detach())  # the only sync besides evaluation
                    history.append({"step": done, "acc": acc, "loss": last_loss})
                    if acc > peak:
                        peak, peak_step = acc, done
                    task.update(loss=last_loss, acc=acc)
                task.advance()
        seconds = time.perf_counter() - start
        train_seconds = max(seconds - eval_seconds, 1e-9)
        return TrainResult(
            final_acc=acc,
            peak_acc=max(peak, acc),
            peak_step=peak_step,
            iterations=cfg.iterations,
            seconds=seconds,
            history=history,
            extra={
                "images_per_s": cfg.iterations * min(cfg.batch_size, len(train)) / train_seconds,
                "eval_seconds": eval_seconds,
                "protocol": self.protocol(),
            },
        )


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
