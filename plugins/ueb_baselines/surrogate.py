"""What the surrogate-based poisoners (EM, REM, TAP, EntF) share: building a surrogate from the
victims registry, seeding, index batches, the artifact cache and resumable checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ueb.atomic import save_torch
from ueb.imageset import ImageSet
from ueb.interfaces import Requirement, RunContext
from ueb.params import as_dict
from ueb.training import resolve_device


def device_of(ctx: RunContext) -> torch.device:
    return resolve_device(ctx.device)


def generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def surrogate_requirement(params: Any) -> Requirement:
    """The victim a surrogate-based poisoner builds: its `surrogate` at `surrogate_width`."""
    width = getattr(params, "surrogate_width", None)
    return Requirement("victim", params.surrogate, {"width": width} if width is not None else {})


def victim_identity(victim: Any) -> dict[str, Any]:
    cls = type(victim)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "version": cls.version,
        "params": as_dict(victim.params),
    }


def build_surrogate(
    ctx: RunContext, name: str, width: int | None, train: ImageSet, seed: int
) -> nn.Module:
    """A fresh victim `name` (optionally at `width`), initialised from `seed`, on the device.

    The victim comes from `ctx.plugin`, so the poisoner must list it in `requires()`
    (`surrogate_requirement`); its identity rides on the model into cached recipes.
    """
    params = {"width": width} if width is not None else {}
    victim = ctx.plugin("victim", name, params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = victim.build(train.num_classes, train.image_size, train.channels)
    model._ueb_victim = victim_identity(victim)  # type: ignore[assignment]
    return model.to(device_of(ctx))


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def batches(
    n: int, size: int, gen: torch.Generator | None, drop_last: bool
) -> Iterator[torch.Tensor]:
    """One pass of index batches: shuffled with `gen`, in order without it."""
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    size = min(size, n)
    stop = n - size + 1 if drop_last else n
    for i in range(0, stop, size):
        yield order[i : i + size]


def endless(
    n: int, size: int, gen: torch.Generator | None, drop_last: bool
) -> Iterator[torch.Tensor]:
    """Index batches forever, a fresh pass (and permutation, with `gen`) after each."""
    while True:
        yield from batches(n, size, gen, drop_last)


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Fraction misclassified by `model` in eval mode."""
    was = model.training
    model.eval()
    wrong = 0
    for i in range(0, len(x), batch):
        wrong += int((model(x[i : i + batch]).argmax(1) != y[i : i + batch]).sum())
    model.train(was)
    return wrong / max(1, len(x))


def recipe(poisoner: Any, train: ImageSet, ctx: RunContext, **extra: Any) -> dict[str, Any]:
    """Everything that determines a poisoner's noise: class, version, parameters, data, seed,
    and the surrogate victim it declares."""
    surrogate = None
    if hasattr(poisoner.params, "surrogate"):
        req = surrogate_requirement(poisoner.params)
        surrogate = victim_identity(ctx.plugin(req.kind, req.name, req.params))
    return {
        "poisoner": type(poisoner).__name__,
        "version": poisoner.version,
        "params": as_dict(poisoner.params),
        "data": train.fingerprint(),
        "seed": ctx.seed,
        "surrogate_victim": surrogate,
        **extra,
    }


def cached_tensor(
    ctx: RunContext,
    kind: str,
    rec: dict[str, Any],
    build: Callable[[Path], torch.Tensor],
    **facts: Any,
) -> torch.Tensor:
    """Load `kind`/`rec` from the artifact store or build it (with a checkpoint folder) and store it."""
    art = ctx.artifacts.get(kind, rec)
    out = art.path / "tensor.pt"
    if art.done and out.exists():
        return torch.load(out, map_location="cpu", weights_only=True)
    ckpt = art.path / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    value = build(ckpt).detach().cpu()
    save_torch(value, out, what=f"the {kind} artifact")
    ctx.artifacts.finish(art, **facts)
    return value


def cached_model(
    ctx: RunContext,
    kind: str,
    rec: dict[str, Any],
    model: nn.Module,
    train_fn: Callable[[nn.Module, Path], None],
) -> nn.Module:
    """Load a trained model's weights from the store, or train `model` in place and store them."""
    rec = {**rec, "victim": getattr(model, "_ueb_victim", None)}
    art = ctx.artifacts.get(kind, rec)
    out = art.path / "model.pt"
    if art.done and out.exists():
        model.load_state_dict(torch.load(out, map_location=device_of(ctx), weights_only=True))
        return model
    ckpt = art.path / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    train_fn(model, ckpt)
    save_torch(model.state_dict(), out, what=f"the {kind} artifact")
    ctx.artifacts.finish(art)
    return model


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    save_torch(state, folder / "state.pt", what="a poisoner checkpoint")


def load_checkpoint(folder: Path, device: torch.device) -> dict[str, Any] | None:
    path = folder / "state.pt"
    if not path.exists():
        return None
    return torch.load(path, map_location=device, weights_only=False)
