"""The conformance kit (ueb.testing.check_*): every built-in plugin passes it at smoke scale, and
each check catches a plugin that breaks the promise it guards."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import (
    Batch,
    Budget,
    Countermeasure,
    Dataset,
    Poisoner,
    Requirement,
    Splits,
    TrainResult,
    Victim,
)
from ueb.nn import Classifier
from ueb.params import bounded
from ueb.plan_specs import SpecResolver
from ueb.profile import load_profile
from ueb.registry import get_registry
from ueb.testing import (
    check_countermeasure,
    check_dataset,
    check_poisoner,
    check_victim,
    make_imageset,
    tiny_classifier,
    write_cifar100_archive,
    write_cifar_archive,
    write_image_folders,
)

SMOKE = load_profile("smoke")


def _builtin(kind: str) -> list[str]:
    registry = get_registry()
    return [n for n in registry.names(kind) if registry.get(kind, n).distribution == "ueb"]


def _smoke_instance(kind: str, name: str, **extra: Any) -> Any:
    """The plugin as a smoke run builds it: registered defaults < its smoke preset < the profile."""
    return SpecResolver(get_registry(), SMOKE, {name: extra}).unbound(kind, name)


# --------------------------------------------------------------------------- built-ins


# Built-ins that read local models: the kit runs them on tiny ones the tests make.
def _poisoner_inputs(name: str, folder) -> dict[str, Any]:
    if name == "deephiding":
        # DH(C) is class-wise in its hidden image: every image of a class hides the same one.
        # A trained hider's perturbation also depends on the cover, so the kit's pixel-exact
        # class-wise check holds only for a hider that has not learned yet (one block, a few
        # steps); a run does not check a class-wise claim (docs/deephiding.md).
        return {"blocks": 1, "growth": 8, "iterations": 6, "batch_size": 8, "lr": 1e-3}
    if name == "tue":
        # At its official setting (CSD alone) TUE is class-wise in substance, but on the kit's
        # data a few positions whose class-centre gradient is near zero keep flipping sign
        # between batches, so neither claim holds pixel-exactly there; the CSD-only kit check
        # runs on data where it converges (tests/test_attacks_apbench.py). Here the kit checks
        # the contrastive variant, which is sample-wise.
        return {"ssl_weight": 1.0, "pgd_steps": 2}
    if name in ("uc", "14a"):
        from ueb_attacks_clip.tiny_clip import save_tiny_clip

        return {"clip_path": str(save_tiny_clip(folder / "clip"))}
    return {}


@pytest.mark.parametrize("name", _builtin("poisoner"))
def test_builtin_poisoners_conform(name, tmp_path):
    if name == "ntga" and importlib.util.find_spec("jax") is None:
        # Its kernels need the optional JAX extra: without it the plan stops with one line.
        with pytest.raises(ConfigError, match=r"pip install 'ueb\[ntga\]'"):
            _smoke_instance("poisoner", name).preflight()
        return
    extra = _poisoner_inputs(name, tmp_path)
    check_poisoner(_smoke_instance("poisoner", name, **extra), workdir=tmp_path)


# Settings a built-in needs to run on the kit's synthetic data, each with its reason.
COUNTERMEASURE_SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # The DDPM trains on the clean images of a named dataset (the synthetic set is no dataset).
    "avatar": ({"clean_source": "fashion-mnist"}, {}),
    "eclipse": ({"clean_source": "fashion-mnist"}, {}),
    # The official method leaves [0, 1] on purpose (clamp=False); everything else is checked.
    "orthogonal-projection": ({}, {"value_range": None}),
}


@pytest.mark.parametrize("name", _builtin("countermeasure"))
def test_builtin_countermeasures_conform(name, tmp_path):
    params, options = COUNTERMEASURE_SETTINGS.get(name, ({}, {}))
    check_countermeasure(
        _smoke_instance("countermeasure", name, **params), workdir=tmp_path, **options
    )


@pytest.mark.parametrize("name", _builtin("victim"))
def test_builtin_victims_conform(name):
    check_victim(_smoke_instance("victim", name))


def _dataset_files(name: str, folder) -> tuple[dict[str, Any], Any]:
    """(params, root) for a built-in dataset: small files in the official layouts."""
    if name == "cifar10":
        return {}, write_cifar_archive(folder, per_class=2, num_classes=10, test_per_class=1).parent
    if name == "cifar100":
        return {}, write_cifar100_archive(
            folder, per_class=1, num_classes=100, test_per_class=1
        ).parent
    if name == "imagenet-subset":
        return {"num_classes": 3, "size": 32}, write_image_folders(
            folder, num_classes=4, per_class=5
        )
    if name == "svhn":
        from test_datasets_more import write_svhn_files

        return {}, write_svhn_files(folder, per_class=1, test_per_class=1)
    if name == "tiny-imagenet":
        from test_datasets_more import write_tiny_imagenet

        return {}, write_tiny_imagenet(folder, num_classes=2, per_class=2, val_per_class=1)
    return {}, None


@pytest.mark.parametrize("name", _builtin("dataset"))
def test_builtin_datasets_conform(name, tmp_path):
    params, root = _dataset_files(name, tmp_path)
    splits = check_dataset(_smoke_instance("dataset", name, **params), root=root)
    if name == "imagenet-subset":
        assert splits.train.num_classes == 3 and splits.train.image_size == 32


# --------------------------------------------------------------------------- poisoners


class AddNoise(Poisoner):
    """Sample-wise uniform noise in Linf eps, from the run's seed: passes every check."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)

    def budget(self):
        return Budget("linf", self.params.eps)

    def noise(self, train, ctx):
        gen = torch.Generator().manual_seed(ctx.seed)
        return (torch.rand(train.images.shape, generator=gen) * 2 - 1) * self.params.eps

    def poison(self, train, ctx):
        return (train.float01() + self.noise(train, ctx)).clamp(0, 1)


class ClassNoise(AddNoise):
    """One noise pattern per class (clipping at 0 and 255 included): class-wise, passes."""

    @property
    def sample_wise(self):
        return False

    def noise(self, train, ctx):
        gen = torch.Generator().manual_seed(ctx.seed)
        per_class = (
            torch.rand(train.num_classes, *train.images.shape[1:], generator=gen) * 2 - 1
        ) * self.params.eps
        return per_class[train.labels]


class ClassPatch(Poisoner):
    """A 2x2 patch of one grey level per class (the difference to each image varies): passes."""

    version = "1"
    deterministic = True  # one fixed grey level per class, no randomness

    def budget(self):
        return Budget("l0", 4)

    @property
    def sample_wise(self):
        return False

    def poison(self, train, ctx):
        x = train.float01().clone()
        x[:, :, :2, :2] = torch.linspace(0.2, 0.8, train.num_classes)[train.labels][
            :, None, None, None
        ]
        return x


def test_a_seeded_poisoner_whose_seed_changes_nothing_is_caught(tmp_path):
    class IgnoresSeed(AddNoise):
        def poison(self, train, ctx):
            gen = torch.Generator().manual_seed(123)  # a fixed seed, not ctx.seed
            noise = (torch.rand(train.images.shape, generator=gen) * 2 - 1) * self.params.eps
            return (train.float01() + noise).clamp(0, 1)

    with pytest.raises(AssertionError, match="byte-identical poisons for seeds 0 and 1"):
        check_poisoner(IgnoresSeed, workdir=tmp_path)


def test_well_behaved_poisoners_pass_including_clipped_class_noise_and_patches(tmp_path):
    check_poisoner(AddNoise, workdir=tmp_path / "a")
    data = make_imageset(per_class=6, num_classes=3)
    data = data.with_images(
        torch.where(torch.arange(32)[None, None, None, :] < 4, 0, data.images).to(torch.uint8)
    )
    assert int((data.images == 0).sum()) and int(
        (data.images == 255).sum()
    )  # both ends get clipped
    out = check_poisoner(ClassNoise, data=data, workdir=tmp_path / "b")
    assert out.images.dtype == torch.uint8 and len(out) == len(data)
    check_poisoner(ClassPatch(), workdir=tmp_path / "c")


def _poisoner(base: type = AddNoise, **attrs: Any) -> type:
    return type("Broken", (base,), attrs)


class _Unfrozen(AddNoise):
    @dataclass
    class Params:
        eps: float = 8 / 255


class _WrongAnnotation(AddNoise):
    @dataclass(frozen=True)
    class Params:
        eps: int = bounded(8 / 255, ge=0)  # type: ignore[assignment]


class _BadPreset(AddNoise):
    presets = {"smoke": {"epsilon": 0.1}}


class _UndeclaredSurrogate(AddNoise):
    def poison(self, train, ctx):
        ctx.plugin("victim", "fastnet", {"stem_width": 4})
        return super().poison(train, ctx)


class _DeclaredSurrogate(_UndeclaredSurrogate):
    def requires(self):
        return [Requirement("victim", "fastnet", {"stem_width": 4})]


class _InPlace(AddNoise):
    def poison(self, train, ctx):
        train.images[0] = 0
        return train.float01()


BROKEN_POISONERS = {
    "shape": (_poisoner(poison=lambda self, train, ctx: train.float01()[:, :, :-1]), "expected"),
    "range": (_poisoner(poison=lambda self, train, ctx: train.float01() * 1.5), "outside [0, 1]"),
    "budget": (_poisoner(budget=lambda self: Budget("linf", 2 / 255)), "exceeds its Linf budget"),
    "claims class-wise": (
        _poisoner(sample_wise=property(lambda self: False)),
        "declares sample_wise = False",
    ),
    "claims sample-wise": (
        _poisoner(ClassNoise, sample_wise=property(lambda self: True)),
        "claims to be sample-wise",
    ),
    "nondeterministic": (
        _poisoner(
            noise=lambda self, train, ctx: (
                (
                    torch.rand(
                        train.images.shape,
                        generator=torch.Generator().manual_seed(
                            random.SystemRandom().randrange(2**31)
                        ),
                    )
                    - 0.5
                )
                * 0.03
            )
        ),
        "not deterministic",
    ),
    "report": (_poisoner(report=lambda self: {"psnr": float("inf")}), "not strict JSON"),
    "report type": (_poisoner(report=lambda self: [1]), "return a dict"),
    "in place": (_InPlace, "changed the clean training set in place"),
    "version": (_poisoner(version=""), "version"),
    "unfrozen": (_Unfrozen, "not frozen"),
    "annotation": (_WrongAnnotation, "do not parse back"),
    "preset": (_BadPreset, "presets['smoke'] does not parse"),
    "undeclared plugin": (_UndeclaredSurrogate, "requires() declares nothing"),
    "input identity": (
        _poisoner(input_identity=lambda self: {"weights": Path("w.pt")}),
        "input_identity() is not a JSON-able",
    ),
    "budget type": (_poisoner(budget=lambda self: 8 / 255), "return ueb.interfaces.Budget"),
    "wrong kind": (type("NotAPoisoner", (Countermeasure,), {}), "is not a Poisoner subclass"),
}


@pytest.mark.parametrize("case", list(BROKEN_POISONERS))
def test_check_poisoner_catches(case, tmp_path):
    cls, message = BROKEN_POISONERS[case]
    with pytest.raises(AssertionError, match=_escaped(message)):
        check_poisoner(cls, workdir=tmp_path)


def test_a_declared_requirement_is_built_with_its_parameters(tmp_path):
    check_poisoner(_DeclaredSurrogate, workdir=tmp_path)
    with pytest.raises(AssertionError, match="asked ctx.plugin for victim 'fastnet' with"):
        check_poisoner(
            type(
                "Other",
                (_DeclaredSurrogate,),
                {"requires": lambda self: [Requirement("victim", "fastnet", {"stem_width": 8})]},
            ),
            workdir=tmp_path,
        )


def test_check_poisoner_takes_instances_with_their_parameters(tmp_path):
    out = check_poisoner(AddNoise(AddNoise.Params(eps=2 / 255)), workdir=tmp_path)
    clean = make_imageset(per_class=10, num_classes=4)
    assert int((out.images.to(torch.int16) - clean.images.to(torch.int16)).abs().max()) <= 2
    with pytest.raises(TypeError, match="only with a class"):
        check_poisoner(AddNoise(), params={"eps": 0.1})
    with pytest.raises(AssertionError, match="do not parse"):
        check_poisoner(AddNoise, params={"epsilon": 0.1})


# --------------------------------------------------------------------------- countermeasures


class Darken(Countermeasure):
    stage = "data"

    def transform_train_set(self, train, ctx):
        return train.with_images(train.float01() * 0.5)


class Jitter(Countermeasure):
    stage = "train"

    def augment(self, batch, step):
        noise = torch.rand(batch.x.shape, generator=step.generator) * 0.02
        return Batch((batch.x + noise).clamp(0, 1), batch.y)

    def loss(self, model, batch, step):
        return nn.functional.cross_entropy(model(batch.x), batch.y, label_smoothing=0.1)


class HeadOnly(Countermeasure):
    stage = "protocol"

    def fit(self, model, train, test, trainer, ctx):
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return trainer.fit(model, train, test, hooks=self)


def test_well_behaved_countermeasures_pass(tmp_path):
    for cls in (Darken, Jitter, HeadOnly):
        result = check_countermeasure(cls, workdir=tmp_path / cls.__name__)
        assert 0 <= result.final_acc <= 100


def _cm(base: type, **attrs: Any) -> type:
    return type("Broken", (base,), attrs)


BROKEN_COUNTERMEASURES = {
    "data work, train stage": (_cm(Darken, stage="train"), "declare stage = 'data'"),
    "batch work, data stage": (
        _cm(Jitter, stage="data", loss=Countermeasure.loss),
        "declare stage = 'train'",
    ),
    "loss work, data stage": (
        _cm(Jitter, stage="data", augment=Countermeasure.augment),
        "differs from the plain loss",
    ),
    "protocol without fit": (_cm(Jitter, stage="protocol"), "does not override fit"),
    "fit outside protocol": (_cm(HeadOnly, stage="train"), "declare stage = 'protocol'"),
    "unknown stage": (_cm(Darken, stage="preprocess"), "declares stage 'preprocess'"),
    "drops images": (
        _cm(Darken, transform_train_set=lambda self, t, ctx: t.subset(list(range(len(t) - 1)))),
        "images for",
    ),
    "changes labels": (
        _cm(
            Darken,
            transform_train_set=lambda self, t, ctx: dataclasses.replace(
                t, labels=t.labels.flip(0)
            ),
        ),
        "changed labels",
    ),
    "returns a tensor": (
        _cm(Darken, transform_train_set=lambda self, t, ctx: t.float01()),
        "return an ImageSet",
    ),
    "resizes": (
        _cm(
            Darken, transform_test_set=lambda self, t, ctx: t.with_images(t.images[:, :, :16, :16])
        ),
        "changed the image shape",
    ),
    "out of range": (
        _cm(Darken, transform_train_set=lambda self, t, ctx: t.with_images(t.float01() * 2)),
        "clamp to [0, 1]",
    ),
    "in place": (
        _cm(Darken, transform_train_set=lambda self, t, ctx: t.with_images(t.images.zero_())),
        "changed its input in place",
    ),
    "random data": (
        _cm(
            Darken,
            transform_train_set=lambda self, t, ctx: t.with_images(
                t.float01() * random.SystemRandom().random()
            ),
        ),
        "not deterministic",
    ),
    "batch size": (
        _cm(Jitter, augment=lambda self, b, s: Batch(b.x[:-1], b.y[:-1])),
        "keep the batch size",
    ),
    "half a mix": (
        _cm(Jitter, augment=lambda self, b, s: Batch(b.x, b.y, y2=b.y)),
        "only one of y2 and lam",
    ),
    "loss per sample": (
        _cm(
            Jitter,
            loss=lambda self, m, b, s: nn.functional.cross_entropy(m(b.x), b.y, reduction="none"),
        ),
        "return a scalar tensor",
    ),
    "detached loss": (
        _cm(Jitter, loss=lambda self, m, b, s: torch.tensor(1.0)),
        "without a gradient",
    ),
    "accuracy as a fraction of 1.0 of 100": (
        _cm(
            HeadOnly,
            fit=lambda self, m, tr, te, trainer, ctx: TrainResult(
                final_acc=150.0, peak_acc=150.0, peak_step=1, iterations=1, seconds=0.0
            ),
        ),
        "percentages in [0, 100]",
    ),
    "extra not JSON": (
        _cm(
            HeadOnly,
            fit=lambda self, m, tr, te, trainer, ctx: TrainResult(
                50.0, 50.0, 1, 1, 0.0, extra={"loss": float("nan")}
            ),
        ),
        "strict JSON",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_COUNTERMEASURES))
def test_check_countermeasure_catches(case, tmp_path):
    cls, message = BROKEN_COUNTERMEASURES[case]
    with pytest.raises(AssertionError, match=_escaped(message)):
        check_countermeasure(cls, workdir=tmp_path)


def test_value_range_none_accepts_a_method_that_leaves_the_unit_range(tmp_path):
    wide = _cm(
        Darken, transform_train_set=lambda self, t, ctx: t.with_images(t.float01() * 1.2 - 0.1)
    )
    check_countermeasure(wide, workdir=tmp_path, value_range=None)


# --------------------------------------------------------------------------- victims


class Small(Victim):
    version = "1"

    @dataclass(frozen=True)
    class Params:
        width: int = bounded(8, ge=1)

    def build(self, num_classes, image_size, in_channels=3):
        return tiny_classifier(num_classes, in_channels, self.params.width)


class _NotFlat(Small):
    def build(self, num_classes, image_size, in_channels=3):
        backbone = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2))
        return Classifier(backbone, 16, num_classes)


class _Plain(Small):
    def build(self, num_classes, image_size, in_channels=3):
        return nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes)
        )


class _RandomInit(Small):
    def build(self, num_classes, image_size, in_channels=3):
        model = super().build(num_classes, image_size, in_channels)
        with torch.no_grad():
            model.head.weight.add_(
                torch.rand(
                    model.head.weight.shape,
                    generator=torch.Generator().manual_seed(random.SystemRandom().randrange(2**31)),
                )
            )
        return model


class _ThreeChannelsOnly(Small):
    def build(self, num_classes, image_size, in_channels=3):
        return super().build(num_classes, image_size, 3)


class _TenClasses(Small):
    def build(self, num_classes, image_size, in_channels=3):
        return super().build(10, image_size, in_channels)


class _Frozen(Small):
    """Gradients never reach the weights."""

    def build(self, num_classes, image_size, in_channels=3):
        model = super().build(num_classes, image_size, in_channels)
        for p in model.parameters():
            p.register_hook(torch.zeros_like)
        return model


BROKEN_VICTIMS = {
    "features not flat": (_NotFlat, "end it with flat features"),
    "not a Classifier": (_Plain, "return ueb.nn.Classifier"),
    "random init": (_RandomInit, "different weights under the same torch.manual_seed"),
    "ignores in_channels": (
        _ThreeChannelsOnly,
        "the model fails on a batch of shape (4, 1, 48, 48)",
    ),
    "wrong class count": (_TenClasses, "expected finite (4, 4) logits"),
    "untrainable": (_Frozen, "changed no weight"),
}


def test_a_well_behaved_victim_passes():
    check_victim(Small)
    check_victim(Small(Small.Params(width=4)), num_classes=7, shapes=((16, 2),))


@pytest.mark.parametrize("case", list(BROKEN_VICTIMS))
def test_check_victim_catches(case):
    cls, message = BROKEN_VICTIMS[case]
    with pytest.raises(AssertionError, match=_escaped(message)):
        check_victim(cls)


# --------------------------------------------------------------------------- datasets


class Synthetic(Dataset):
    version = "1"

    def make(self) -> Splits:
        return Splits(
            make_imageset(per_class=4, num_classes=3),
            make_imageset(per_class=2, num_classes=3, seed=1),
        )

    def load(self, root):
        return self.make()


def _ds(transform) -> type:
    return type("Broken", (Synthetic,), {"load": lambda self, root: transform(self.make())})


def _relabel(s: Splits) -> Splits:
    return Splits(dataclasses.replace(s.train, labels=s.train.labels + 1), s.test)


BROKEN_DATASETS = {
    "labels out of range": (_ds(_relabel), "labels span [1, 3] but there are 3 classes"),
    "class lists differ": (
        _ds(lambda s: Splits(s.train, dataclasses.replace(s.test, classes=("a", "b", "c")))),
        "different classes",
    ),
    "not square": (
        _ds(
            lambda s: Splits(
                s.train.with_images(s.train.images[:, :, :16]),
                s.test.with_images(s.test.images[:, :, :16]),
            )
        ),
        "victims take square images",
    ),
    "shapes differ": (
        _ds(lambda s: Splits(s.train, s.test.with_images(s.test.images[:, :1]))),
        "use one shape",
    ),
    "a class missing": (
        _ds(lambda s: Splits(s.train.subset(list(range(8))), s.test)),
        "have no training image",
    ),
    "empty": (_ds(lambda s: Splits(s.train, s.test.subset([]))), "the test split is empty"),
    "float out of range": (
        _ds(lambda s: Splits(s.train.with_images(s.train.float01() * 2), s.test)),
        "use [0, 1]",
    ),
    "not Splits": (_ds(lambda s: (s.train, s.test)), "return ueb.interfaces.Splits"),
    "shuffles on every load": (
        _ds(lambda s: Splits(s.train.subset(torch.randperm(len(s.train)).tolist()), s.test)),
        "different data on a second load",
    ),
}


def test_a_well_behaved_dataset_passes():
    splits = check_dataset(Synthetic)
    assert isinstance(splits.train, ImageSet) and splits.train.num_classes == 3


@pytest.mark.parametrize("case", list(BROKEN_DATASETS))
def test_check_dataset_catches(case):
    cls, message = BROKEN_DATASETS[case]
    with pytest.raises(AssertionError, match=_escaped(message)):
        check_dataset(cls)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_the_example_third_party_package_conforms(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "thirdparty_plugin"))
    from ueb_example_plugin.methods import CornerPatch, FlipAll

    check_poisoner(
        CornerPatch, workdir=tmp_path / "p"
    )  # a class-wise patch, levels 0..255 included
    check_countermeasure(FlipAll, workdir=tmp_path / "c")
