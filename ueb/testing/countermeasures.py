"""The countermeasure kit: its stage, its data transforms, its step hooks and its training."""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ueb.imageset import ImageSet

if typing.TYPE_CHECKING:
    from torch import nn

    from ueb.interfaces import RunContext, TrainResult
    from ueb.profile import TrainingConfig
from ueb.testing.contexts import _seed, _workdir, make_run_context, tiny_training
from ueb.testing.declarations import _instantiate, _who
from ueb.testing.fixtures import make_imageset, tiny_classifier

# --------------------------------------------------------------------------- countermeasures

STAGE_HOOKS = {
    "data": ("transform_train_set", "transform_test_set"),
    "train": ("augment", "loss"),
    "protocol": ("fit",),
}


def check_countermeasure(
    plugin: Any,
    *,
    params: Mapping[str, Any] | None = None,
    data: ImageSet | None = None,
    test: ImageSet | None = None,
    victim: Any = None,
    seed: int = 0,
    device: str = "cpu",
    training: TrainingConfig | None = None,
    workdir: str | Path | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> TrainResult:
    """Run a Countermeasure (class or instance) through every hook the framework calls.

    Declarations; `stage` declared and matching what the hooks do (data: only transform_*
    change anything; train: only augment/loss; protocol: fit is overridden, and only
    protocol overrides it); the data-stage transforms keep length, labels, classes and image
    shape, return ImageSets with float values in `value_range` (None: any finite value, for a
    method that leaves [0, 1] on purpose), leave their input untouched and repeat under the
    same seed; `augment` returns a Batch of the same size; `loss` a finite scalar with a
    gradient; `fit` (with a tiny training protocol) a TrainResult with accuracies in [0, 100]
    and JSON-storable history and extras. `victim` (a Victim class or instance) builds the
    model; default `tiny_classifier`. Returns the TrainResult.
    """
    from ueb.interfaces import Countermeasure

    training = training or tiny_training()
    train = data if data is not None else make_imageset(per_class=10, num_classes=4)
    if test is None:
        test = make_imageset(
            per_class=4,
            num_classes=train.num_classes,
            size=train.image_size,
            channels=train.channels,
            seed=seed + 1,
        )
    cm = _instantiate(plugin, Countermeasure, params, training)
    who = _who(cm)
    stage = _check_stage(cm, who)

    def model() -> nn.Module:
        torch.manual_seed(seed)
        if victim is None:
            return tiny_classifier(train.num_classes, train.channels)
        from ueb.interfaces import Victim

        built = _instantiate(victim, Victim, None, training)
        return built.build(train.num_classes, train.image_size, train.channels)

    with _workdir(workdir) as root:
        ctx = make_run_context(root, seed=seed, device=device, training=training, owner=cm)
        new_train = _transformed(cm, "transform_train_set", train, ctx, seed, value_range, who)
        new_test = _transformed(cm, "transform_test_set", test, ctx, seed, value_range, who)
        again = type(cm)(cm.params, name=cm.name)
        repeat = _transformed(again, "transform_train_set", train, ctx, seed, value_range, who)
        if not torch.equal(repeat.images, new_train.images):
            raise AssertionError(
                f"{who}.transform_train_set is not deterministic under seed {seed}; draw randomness from a generator seeded by ctx.seed"
            )
        if stage != "data":
            for hook, before, after in (
                ("transform_train_set", train, new_train),
                ("transform_test_set", test, new_test),
            ):
                if not torch.equal(before.float01(), after.float01()):
                    raise AssertionError(
                        f"{who} declares stage '{stage}' but {hook}() changes the images; declare stage = 'data'"
                    )
        _check_step_hooks(cm, model(), new_train, training, seed, stage, who)
        from ueb.training import Trainer

        trainer = Trainer(training, device, seed)
        result = cm.fit(model(), new_train, new_test, trainer, ctx)
        _check_train_result(result, who)
    return result


def _check_stage(cm: Any, who: str) -> str:
    """The declared stage against the hooks the class overrides; returns the stage."""
    from ueb.interfaces import Countermeasure

    stage = type(cm).stage
    if stage not in STAGE_HOOKS:
        raise AssertionError(
            f"{who} declares stage {stage!r}; declare the class attribute stage = 'data', 'train' or 'protocol'"
        )
    overrides_fit = type(cm).fit is not Countermeasure.fit
    if stage == "protocol" and not overrides_fit:
        raise AssertionError(
            f"{who} declares stage 'protocol' but does not override fit(); override fit, or declare the stage of the hooks it overrides"
        )
    if stage != "protocol" and overrides_fit:
        raise AssertionError(
            f"{who} declares stage '{stage}' but overrides fit(), a protocol-stage hook; declare stage = 'protocol'"
        )
    return str(stage)


def _overrides(cm: Any, hook: str) -> bool:
    from ueb.interfaces import Countermeasure

    return getattr(type(cm), hook) is not getattr(Countermeasure, hook)


def _transformed(
    cm: Any,
    hook: str,
    images: ImageSet,
    ctx: RunContext,
    seed: int,
    value_range: tuple[float, float] | None,
    who: str,
) -> ImageSet:
    before = images.fingerprint()
    _seed(seed)
    out = getattr(cm, hook)(images, ctx)
    where = f"{who}.{hook}"
    if images.fingerprint() != before:
        raise AssertionError(
            f"{where} changed its input in place; build new images (images.with_images(...))"
        )
    if not isinstance(out, ImageSet):
        raise AssertionError(
            f"{where} returned {type(out).__name__}; return an ImageSet (images.with_images(new_images))"
        )
    if len(out) != len(images):
        raise AssertionError(
            f"{where} returned {len(out)} images for {len(images)}; keep one image per input image"
        )
    if tuple(out.images.shape[1:]) != tuple(images.images.shape[1:]):
        raise AssertionError(
            f"{where} changed the image shape {tuple(images.images.shape[1:])} to {tuple(out.images.shape[1:])}; keep (C, H, W)"
        )
    if not torch.equal(out.labels.cpu(), images.labels.cpu()) or out.classes != images.classes:
        raise AssertionError(
            f"{where} changed labels or classes; a countermeasure transforms images only"
        )
    if out.images.is_floating_point():
        x = out.images
        if not bool(torch.isfinite(x).all()):
            raise AssertionError(f"{where} returned NaN or inf pixels")
        lo, hi = float(x.min()), float(x.max())
        if value_range is not None and (lo < value_range[0] - 1e-6 or hi > value_range[1] + 1e-6):
            raise AssertionError(
                f"{where} returned float images in [{lo:.4f}, {hi:.4f}]; clamp to [{value_range[0]:g}, {value_range[1]:g}]"
            )
    return out


def _check_step_hooks(
    cm: Any,
    model: nn.Module,
    train: ImageSet,
    training: TrainingConfig,
    seed: int,
    stage: str,
    who: str,
) -> None:
    from ueb.interfaces import Batch, StepContext

    n = min(8, len(train))
    x, y = train.float01()[:n].float(), train.labels[:n]
    model.train()
    for step in (0, training.iterations - 1):
        ctx = StepContext(
            step, training.iterations, torch.Generator().manual_seed(seed + step), model
        )
        batch = cm.augment(Batch(x.clone(), y.clone()), ctx)
        where = f"{who}.augment (step {step})"
        if not isinstance(batch, Batch):
            raise AssertionError(
                f"{where} returned {type(batch).__name__}; return a ueb.interfaces.Batch"
            )
        if batch.x.dim() != 4 or batch.x.shape[0] != batch.y.shape[0] or batch.y.dim() != 1:
            raise AssertionError(
                f"{where} returned x {tuple(batch.x.shape)} and y {tuple(batch.y.shape)}; keep x (N, C, H, W) and y (N,) paired"
            )
        if batch.x.shape[0] != n or tuple(batch.x.shape[1:]) != tuple(x.shape[1:]):
            raise AssertionError(
                f"{where} turned a batch {tuple(x.shape)} into {tuple(batch.x.shape)}; keep the batch size and image shape"
            )
        if not batch.x.is_floating_point() or not bool(torch.isfinite(batch.x).all()):
            raise AssertionError(
                f"{where} returned non-float or non-finite images; return float images in [0, 1]"
            )
        if (batch.y2 is None) != (batch.lam is None):
            raise AssertionError(f"{where} set only one of y2 and lam; a mixed batch sets both")
        if (
            batch.y2 is not None
            and batch.lam is not None
            and (batch.y2.shape != batch.y.shape or batch.lam.shape != batch.y.shape)
        ):
            raise AssertionError(
                f"{where} returned y2 {tuple(batch.y2.shape)} and lam {tuple(batch.lam.shape)}; both are (N,) like y"
            )
        if (
            stage == "data"
            and _overrides(cm, "augment")
            and (batch.y2 is not None or not torch.equal(batch.x, x))
        ):
            raise AssertionError(
                f"{where} changes the batch, but {who} declares stage 'data'; declare stage = 'train'"
            )
        model.zero_grad(set_to_none=True)
        loss = cm.loss(model, batch, ctx)
        where = f"{who}.loss (step {step})"
        if stage == "data" and _overrides(cm, "loss") and isinstance(loss, torch.Tensor):
            with torch.no_grad():
                plain = batch.loss(model(batch.x))
            if not torch.allclose(loss.detach(), plain, rtol=1e-5, atol=1e-6):
                raise AssertionError(
                    f"{where} differs from the plain loss, but {who} declares stage 'data'; declare stage = 'train'"
                )
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise AssertionError(
                f"{where} returned {shape}; return a scalar tensor (reduce with .mean())"
            )
        if not loss.requires_grad:
            raise AssertionError(
                f"{where} returned a tensor without a gradient; compute it from model(x) without torch.no_grad()"
            )
        if not bool(torch.isfinite(loss)):
            raise AssertionError(f"{where} is {float(loss)}; it must be finite")
        loss.backward()
        if not any(p.grad is not None for p in model.parameters()):
            raise AssertionError(
                f"{where} reaches none of the model's parameters; compute it through the model passed in"
            )


def _check_train_result(result: Any, who: str) -> None:
    from ueb.interfaces import TrainResult

    where = f"{who}.fit"
    if not isinstance(result, TrainResult):
        raise AssertionError(
            f"{where} returned {type(result).__name__}; return a ueb.interfaces.TrainResult"
        )
    for name in ("final_acc", "peak_acc"):
        value = getattr(result, name)
        if not isinstance(value, int | float) or not 0 <= value <= 100:
            raise AssertionError(
                f"{where} returned {name} = {value!r}; accuracies are percentages in [0, 100]"
            )
    if result.peak_acc + 1e-9 < result.final_acc:
        raise AssertionError(
            f"{where} returned peak_acc {result.peak_acc} below final_acc {result.final_acc}; the peak includes the end"
        )
    if not isinstance(result.iterations, int) or result.iterations < 0:
        raise AssertionError(
            f"{where} returned iterations = {result.iterations!r}; a count of training steps"
        )
    try:
        json.dumps({"history": result.history, "extra": result.extra}, allow_nan=False, default=str)
    except (TypeError, ValueError) as exc:
        raise AssertionError(
            f"{where}'s history or extra cannot be stored as strict JSON ({exc})"
        ) from exc
