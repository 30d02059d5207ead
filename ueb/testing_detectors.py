"""The conformance kit for detectors: `check_detector`, and the planted sets it uses.

A detector's own tests call it the way the other kinds call `ueb.testing.check_poisoner`:

    from ueb.testing_detectors import check_detector

    def test_my_detector_keeps_the_contract(tmp_path):
        check_detector(MyDetector, params={"epochs": 2}, workdir=tmp_path)

It prepares the plugin as a run does (typed parameters, `bind`, `preflight`, a context whose
`plugin` builds only what `requires()` declares) and checks: every numeric parameter declares
its range with `ueb.params.bounded` and a value just outside it is rejected; `detect` returns a
`Detection` with one finite float score per image (numpy), a finite set score and threshold, a
bool verdict and JSON-able facts; it leaves its input untouched; a fresh instance with a fresh
artifact store gives the same scores under the same seed; the verdict is "clean" on a set with
nothing to learn and "poisoned" on the same images carrying a class-wise shortcut.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ueb.imageset import ImageSet
from ueb.testing import (
    _instantiate,
    _seed,
    _who,
    _workdir,
    is_numeric,
    make_run_context,
    tiny_training,
)

if typing.TYPE_CHECKING:
    from ueb.interfaces import Detection
    from ueb.profile import TrainingConfig


def make_patternless_set(
    per_class: int = 24, num_classes: int = 4, size: int = 16, seed: int = 0
) -> ImageSet:
    """Uniform noise images with labels that nothing in them predicts (held-out accuracy of
    any model is chance): a clean set on which no detector should find a shortcut."""
    gen = torch.Generator().manual_seed(seed)
    n = per_class * num_classes
    images = (torch.rand(n, 3, size, size, generator=gen) * 255).round().to(torch.uint8)
    labels = torch.arange(n) % num_classes
    return ImageSet(images, labels, tuple(f"class{c}" for c in range(num_classes)), "noise")


def plant_shortcut(
    clean: ImageSet, eps: float = 32 / 255, fraction: float = 1.0, seed: int = 0
) -> tuple[ImageSet, np.ndarray]:
    """`clean` with a class-wise shortcut on a seeded `fraction` of its images; returns the set
    and the boolean mask of the images that carry it.

    The shortcut of class k is +-eps, one random sign per channel and image half (top, bottom):
    linearly separable and nearly unchanged by the random crop and flip of a victim's training.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    c, h, w = clean.images.shape[1:]
    signs = torch.randint(0, 2, (clean.num_classes, c, 2), generator=gen).float() * 2 - 1
    rows = (torch.arange(h) >= h // 2).long()
    patterns = signs[:, :, rows][..., None].expand(-1, -1, -1, w)
    n = len(clean)
    chosen = torch.randperm(n, generator=gen)[: round(fraction * n)]
    mask = np.zeros(n, dtype=bool)
    mask[chosen.numpy()] = True
    x = clean.float01().clone()
    x[chosen] = (x[chosen] + eps * patterns[clean.labels[chosen]]).clamp(0, 1)
    return clean.with_images((x * 255).round().to(torch.uint8), planted=fraction), mask


def check_detector(
    plugin: Any,
    *,
    params: Mapping[str, Any] | None = None,
    clean: ImageSet | None = None,
    poisoned: ImageSet | None = None,
    seed: int = 0,
    device: str = "cpu",
    training: TrainingConfig | None = None,
    workdir: str | Path | None = None,
) -> tuple[Detection, Detection]:
    """Run a Detector (class or instance) on a clean and a poisoned set; check its promises.

    Default sets: `make_patternless_set()` and the same images with a class-wise shortcut on
    every image (`plant_shortcut`). A method aimed at another kind of poison passes its own
    `poisoned` set. Returns the (clean, poisoned) detections.
    """
    from ueb.interfaces import Detector

    training = training or tiny_training()
    clean = clean if clean is not None else make_patternless_set(seed=seed)
    poisoned = poisoned if poisoned is not None else plant_shortcut(clean, seed=seed)[0]
    detector = _instantiate(plugin, Detector, params, training)
    who = _who(detector)
    _check_bounded(type(detector), who)
    with _workdir(workdir) as root:
        first = _detect_once(detector, clean, root / "unpoisoned", seed, device, training, who)
        again = type(detector)(detector.params, name=detector.name)
        second = _detect_once(again, clean, root / "again", seed, device, training, who)
        if not np.array_equal(first.scores, second.scores) or first.poisoned != second.poisoned:
            diff = float(np.max(np.abs(first.scores - second.scores)))
            raise AssertionError(
                f"{who} is not deterministic: two runs with seed {seed} give scores up to {diff:.3g} apart; "
                "draw all randomness from generators seeded by ctx.seed (or torch's global RNG, which the framework seeds)"
            )
        hit = _detect_once(detector, poisoned, root / "poisoned", seed, device, training, who)
    if first.poisoned:
        raise AssertionError(
            f"{who} calls a clean set with nothing to learn poisoned (set score {first.set_score:.3g}, "
            f"threshold {first.threshold:.3g}); check the decision rule"
        )
    if not hit.poisoned:
        raise AssertionError(
            f"{who} calls a set with a class-wise shortcut on every image clean (set score "
            f"{hit.set_score:.3g}, threshold {hit.threshold:.3g}); train longer in the check's parameters, "
            "or pass the kind of poisoned set the method detects"
        )
    return first, hit


def _check_bounded(cls: type, who: str) -> None:
    """Every numeric parameter declares a range (`ueb.testing` checks that) and a value just
    outside it is rejected."""
    from ueb.errors import ConfigError
    from ueb.params import as_dict, bounds_of, parse_params

    hints = typing.get_type_hints(cls.Params)  # type: ignore[attr-defined]
    stored = as_dict(cls.Params())  # type: ignore[attr-defined]
    for f in dataclasses.fields(cls.Params):  # type: ignore[attr-defined]
        if not f.init or not is_numeric(hints[f.name]):
            continue
        rng = bounds_of(f)
        if rng is None:
            raise AssertionError(
                f"{who}: numeric parameter '{f.name}' declares no range; use ueb.params.bounded(default, ge=/gt=/le=/lt=)"
            )
        sequence = typing.get_origin(hints[f.name]) in (tuple, list)
        for bad in rng.outside():
            value: Any = [bad] if sequence else bad
            try:
                parse_params(cls.Params, {**stored, f.name: value}, where=who)  # type: ignore[attr-defined]
            except ConfigError:
                continue
            raise AssertionError(
                f"{who}: parameter '{f.name}' accepted {bad!r}, outside {rng.describe()}"
            )


def _detect_once(
    detector: Any,
    data: ImageSet,
    root: Path,
    seed: int,
    device: str,
    training: TrainingConfig,
    who: str,
) -> Detection:
    from ueb.interfaces import Detection

    ctx = make_run_context(root, seed=seed, device=device, training=training, owner=detector)
    before = data.fingerprint()
    _seed(seed)
    out = detector.detect(data, ctx)
    if data.fingerprint() != before:
        raise AssertionError(f"{who}.detect() changed its input in place; work on a copy")
    if not isinstance(out, Detection):
        raise AssertionError(
            f"{who}.detect() returned {type(out).__name__}; return ueb.interfaces.Detection"
        )
    scores = out.scores
    if not isinstance(scores, np.ndarray) or scores.shape != (len(data),):
        shape = getattr(scores, "shape", type(scores).__name__)
        raise AssertionError(
            f"{who}.detect() returned scores of shape {shape} for {len(data)} images; return a numpy array of shape (N,)"
        )
    if not np.issubdtype(scores.dtype, np.floating) or not bool(np.isfinite(scores).all()):
        raise AssertionError(f"{who}.detect() returned non-float or non-finite scores")
    for name in ("set_score", "threshold"):
        value = getattr(out, name)
        if not isinstance(value, int | float) or not np.isfinite(value):
            raise AssertionError(
                f"{who}.detect() returned {name} = {value!r}; give a finite number"
            )
    if not isinstance(out.poisoned, bool):
        raise AssertionError(f"{who}.detect() returned poisoned = {out.poisoned!r}; give a bool")
    try:
        json.dumps(dict(out.extra), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(
            f"{who}.detect() returned extra facts that are not strict JSON ({exc})"
        ) from exc
    return out


__all__ = ["check_detector", "make_patternless_set", "plant_shortcut"]
