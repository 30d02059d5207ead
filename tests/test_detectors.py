"""Detectors: the conformance kit on each built-in detector, the kit's own failures, and what a
simple-network detector must find (a planted class-wise shortcut) and must not (random noise)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import Detection, Detector, RunContext
from ueb.params import bounded, parse_params
from ueb.registry import get_registry
from ueb.testing import make_imageset, make_run_context
from ueb.testing_detectors import check_detector, make_patternless_set, plant_shortcut

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one thread computes them fastest (and alike everywhere)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _preset(name: str, scale: str = "smoke") -> dict[str, Any]:
    entry = get_registry().get("detector", name)
    return {**entry.defaults, **entry.load_class().presets[scale]}


@pytest.mark.parametrize("name", ["simple-net", "simple-net-linear"])
def test_builtin_detectors_keep_the_contract(name, tmp_path):
    cls = get_registry().get("detector", name).load_class()
    clean, poisoned = check_detector(cls, params=_preset(name), workdir=tmp_path)
    assert clean.set_score < clean.threshold < poisoned.set_score
    assert clean.threshold == 0.7  # UDP's detection bound B


def test_simple_net_defaults_are_the_official_settings():
    p = get_registry().create("detector", "simple-net").params
    assert (p.model, p.hidden, p.augment, p.bound, p.folds) == ("two-layer", 0, True, 0.7, 5)
    assert (p.epochs, p.milestones, p.gamma, p.batch_size) == (100, (75, 90), 0.1, 128)
    assert (p.lr, p.momentum, p.weight_decay) == (0.01, 0.9, 5e-4)
    linear = get_registry().create("detector", "simple-net-linear").params
    assert (linear.model, linear.augment) == ("linear", False)


@pytest.mark.parametrize(
    ("key", "value"), [("bound", 1.5), ("folds", 1), ("epochs", 0), ("lr", 0), ("milestones", [0])]
)
def test_out_of_range_parameters_are_rejected(key, value):
    with pytest.raises(ConfigError, match=key):
        get_registry().create("detector", "simple-net", {key: value})


def test_detector_registrations_do_not_import_torch():
    code = (
        "import sys; from ueb.registry import get_registry; r = get_registry(); "
        "print(r.names('detector'), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['simple-net', 'simple-net-linear', 'bias-shift'] False"


def test_all_selects_the_named_detectors_only():
    assert get_registry().select("detector", ["all"]) == ["simple-net"]


# --------------------------------------------------------------------------- what it finds


def _detect(name: str, data: ImageSet, tmp_path: Path, seed: int = 0) -> Detection:
    entry = get_registry().get("detector", name)
    detector = entry.create(_preset(name))
    return detector.detect(data, make_run_context(tmp_path, seed=seed))


def _tolerance(mask: np.ndarray, z: float = 3.0) -> float:
    from ueb.detection import chance_tolerance

    return chance_tolerance(int(mask.sum()), int((~mask).sum()), z)


def test_simple_net_ranks_a_planted_shortcut_above_clean_images(tmp_path):
    from ueb.detection import auroc

    clean = make_imageset(per_class=40, num_classes=4, size=16)
    mixed, mask = plant_shortcut(clean, eps=32 / 255, fraction=0.5, seed=0)
    assert mask.sum() == len(clean) // 2
    found = _detect("simple-net", mixed, tmp_path)
    assert auroc(found.scores, mask) > 0.5 + _tolerance(mask)


def test_the_seed_draws_the_split_and_the_initialisation(tmp_path):
    clean = make_patternless_set()
    first, again = (_detect("simple-net-linear", clean, tmp_path / str(i)) for i in (0, 1))
    other = _detect("simple-net-linear", clean, tmp_path / "2", seed=1)
    assert np.array_equal(first.scores, again.scores)
    assert not np.allclose(first.scores, other.scores)


def test_simple_net_cannot_tell_random_noise_from_clean_images(tmp_path):
    """Sample-wise random +-8/255 noise is no shortcut: the scores of noisy and clean images
    differ by no more than chance does (3 standard deviations of a chance AUROC)."""
    from ueb.detection import auroc

    clean = make_imageset(per_class=40, num_classes=4, size=16)
    gen = torch.Generator().manual_seed(3)
    mask = np.zeros(len(clean), dtype=bool)
    mask[torch.randperm(len(clean), generator=gen)[: len(clean) // 2].numpy()] = True
    x = clean.float01().clone()
    noise = (torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1) * 8 / 255
    x[mask] = (x[mask] + noise[mask]).clamp(0, 1)
    noisy = clean.with_images((x * 255).round().to(torch.uint8))
    found = _detect("simple-net", noisy, tmp_path)
    assert abs(auroc(found.scores, mask) - 0.5) < _tolerance(mask)


# --------------------------------------------------------------------------- the kit fails


class _Constant(Detector):
    """Says what its parameters say, without looking: the base for broken detectors below."""

    version: ClassVar[str] = "1"

    @dataclasses.dataclass(frozen=True)
    class Params:
        level: float = bounded(0.5, ge=0, le=1)

    def detect(self, train: ImageSet, ctx: RunContext) -> Detection:
        share = float(train.float01().mean())
        scores = np.full(len(train), share)
        return Detection(scores, share, 0.5, bool(share > self.params.level))


class _Unbounded(_Constant):
    @dataclasses.dataclass(frozen=True)
    class Params:
        level: float = 0.5


class _Random(_Constant):
    def detect(self, train: ImageSet, ctx: RunContext) -> Detection:
        scores = np.random.default_rng().random(len(train))  # ignores ctx.seed
        return Detection(scores, 0.0, 0.5, False)


class _Short(_Constant):
    def detect(self, train: ImageSet, ctx: RunContext) -> Detection:
        return Detection(np.zeros(len(train) - 1), 0.0, 0.5, False)


class _Blind(_Constant):
    """Calls every set clean."""

    def detect(self, train: ImageSet, ctx: RunContext) -> Detection:
        return Detection(np.zeros(len(train)), 0.0, 0.5, False)


@pytest.mark.parametrize(
    ("cls", "promise"),
    [
        (_Unbounded, "without a range"),
        (_Random, "not deterministic"),
        (_Short, "shape"),
        (_Blind, "class-wise shortcut on every image clean"),
    ],
)
def test_the_kit_names_the_broken_promise(cls, promise, tmp_path):
    with pytest.raises(AssertionError, match=promise):
        check_detector(cls, workdir=tmp_path)


def test_the_kit_rejects_a_detector_that_calls_a_clean_set_poisoned(tmp_path):
    with pytest.raises(AssertionError, match="clean set with nothing to learn poisoned"):
        check_detector(_Constant, params={"level": 0.0}, workdir=tmp_path)


def test_planted_sets_are_what_they_claim():
    clean = make_patternless_set(per_class=10, num_classes=4, size=8)
    assert parse_params(_Constant.Params, {}, "x").level == 0.5
    half, mask = plant_shortcut(clean, eps=16 / 255, fraction=0.5, seed=1)
    changed = (half.images != clean.images).flatten(1).any(1).numpy()
    assert mask.sum() == 20 and not changed[~mask].any() and changed[mask].mean() > 0.9
    delta = half.float01()[mask].sub(clean.float01()[mask])
    for k in range(4):  # one pattern per class where nothing was clipped
        rows = delta[clean.labels[mask] == k]
        inside = (half.images[mask][clean.labels[mask] == k] % 255) != 0
        spread = (rows.amax(0) - rows.amin(0))[inside.all(0)]
        assert float(spread.max()) <= 1 / 255 + 1e-6
