"""Built-in plugins ship their scale as `presets` (their class's, or their registration's for
names that share a class); the profiles keep their own settings only.

The values pinned here are what the profiles' `[plugins.NAME]` tables set before the built-ins
carried them: a preset lost in the move, or one that reaches a name it did not reach before,
changes a number below. The last tests check the typed `Plugin[Params]` bases at run time.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from typing import Any

import pytest
from core_helpers import isolated_registry, minimal_plugins

from ueb.config import RunConfig
from ueb.errors import ConfigError, PluginError
from ueb.hookspecs import hookimpl
from ueb.imageset import ImageSet
from ueb.interfaces import Countermeasure, NoParams, RunContext, Victim
from ueb.params import bounded, parse_params
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.profile import PROFILE_DIR
from ueb.registry import get_registry
from ueb.testing import check_countermeasure, make_imageset

POISONERS = ("em", "em-class", "rem", "tap", "entf", "ar", "lsp")
COUNTERMEASURES = (
    "avatar",
    "simclr",
    "orthogonal-projection",
    "ueraser",
    "ueraser-lite",
    "ueraser-max",
    "at-linf",
    "at-l2",
)
VICTIMS = ("resnet18", "resnet50", "vgg19", "densenet121", "vit")

# (kind, name) -> parameters as the plan resolves them (after bind) at each profile.
PINS: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
    "smoke": {
        ("victim", "resnet18"): {"width": 8},
        ("victim", "resnet50"): {"width": 4},
        ("victim", "vgg19"): {"width": 8},
        ("victim", "densenet121"): {"growth_rate": 4},
        ("victim", "vit"): {"depth": 2, "width": 32, "heads": 4, "mlp_dim": 64},
        ("poisoner", "em"): {"surrogate": "fastnet", "max_rounds": 2, "steps": 4},
        ("poisoner", "em-class"): {"max_rounds": 2, "steps": None, "batch_size": 128},
        ("poisoner", "rem"): {"surrogate": "fastnet", "train_steps": 4, "batch_size": 64},
        ("poisoner", "tap"): {"clean_iterations": 20, "clean_batch_size": 32, "tau": 0.5},
        ("poisoner", "entf"): {"reference_iterations": 20, "robust_steps": 2, "steps": 4},
        ("poisoner", "ar"): {"required_nm_response": 3.0},
        ("countermeasure", "avatar"): {"train_steps": 3, "channels": (8, 16), "reverse_steps": 1},
        ("countermeasure", "simclr"): {"pretrain_steps": 3, "linear_batch_size": 32},
        ("countermeasure", "orthogonal-projection"): {"epochs": 2},
        ("countermeasure", "ueraser"): {"repeats": 2, "adversarial_fraction": 0.5},
        ("countermeasure", "ueraser-lite"): {"repeats": 2, "adversarial_fraction": 0.25},
        ("countermeasure", "at-linf"): {"steps": 1, "step_size": 8 / 255},
        ("countermeasure", "at-l2"): {"steps": 1, "step_size": 2.5},  # 2.5 * eps / steps
    },
    "quick": {
        ("victim", "resnet18"): {"width": 8},
        ("victim", "vgg19"): {"width": 16},
        ("victim", "vit"): {"depth": 4, "width": 64, "mlp_dim": 128},
        ("poisoner", "em"): {"max_rounds": 3, "steps": 3, "step_size": 2 / 255},
        ("poisoner", "em-class"): {"max_rounds": 10, "steps": None, "step_size": 0.8 / 255},
        ("poisoner", "rem"): {"train_steps": 100, "atk_steps": 2, "step_size": 4 / 255},
        ("poisoner", "tap"): {"clean_iterations": 400, "steps": 10, "tau": 0.4},
        ("poisoner", "entf"): {"reference_iterations": 300, "robust_steps": 3, "tau": 0.4},
        ("countermeasure", "avatar"): {"train_steps": 200, "channels": (16, 32), "batch_size": 500},
        ("countermeasure", "simclr"): {"pretrain_steps": 100, "linear_steps": 200},
        ("countermeasure", "ueraser"): {"repeats": 2},
        ("countermeasure", "ueraser-lite"): {"repeats": 5},  # no quick table: the default K
        ("countermeasure", "ueraser-max"): {"repeats": 2},
        ("countermeasure", "at-linf"): {"steps": 2, "step_size": 4 / 255},
        ("countermeasure", "at-l2"): {"steps": 2, "step_size": 1.25},
    },
    "paper": {
        ("victim", "resnet18"): {"width": 64},
        ("victim", "vgg19"): {"width": 64},
        ("poisoner", "em"): {"surrogate": "resnet18", "max_rounds": None},
        ("poisoner", "lsp"): {"norm": 1.0},
        ("poisoner", "ar"): {"eps": 1.0, "coefficients": "published"},
        ("poisoner", "entf"): {"robust_eps": 4 / 255, "reference_crop_padding": 4},
        ("countermeasure", "avatar"): {"clean_source": "cifar10", "clean_split": "train"},
        ("countermeasure", "ueraser"): {"repeats": 5, "adversarial_fraction": 0.25},
        ("countermeasure", "at-linf"): {"steps": 10, "step_size": 2 / 255},
        ("countermeasure", "at-l2"): {"eps": 1.0, "steps": 10, "step_size": 0.25},
    },
}


def _plan(profile: str) -> Any:
    config = RunConfig(
        poisoners=POISONERS, countermeasures=COUNTERMEASURES, victims=VICTIMS, profile=profile
    )
    return resolve(config, get_registry(), load_data=False)


def _equal(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-12)
    if isinstance(want, tuple):
        return tuple(got) == want
    return bool(got == want) and type(got) is type(want)


@pytest.mark.parametrize("profile", sorted(PINS))
def test_each_profile_resolves_the_scale_the_plugins_ship(profile):
    plan = _plan(profile)
    wrong = []
    for (kind, name), pins in PINS[profile].items():
        params = dict(plan.spec(kind, name).params)
        wrong += [
            f"{name}.{key}: {params[key]!r}, expected {value!r}"
            for key, value in pins.items()
            if not _equal(params[key], value)
        ]
    assert not wrong, f"{profile}: " + "; ".join(wrong)


@pytest.mark.parametrize("name", ["deephiding", "deephiding-s"])
def test_the_paper_scale_gives_both_deep_hiding_names_the_diffusion_backend(name):
    """The paper preset (once the profile's `deephiding*` glob) asks for local weights."""
    with pytest.raises(ConfigError, match=rf"{name}\.sig_sd_dir and {name}\.sig_controlnet_dir"):
        resolve(
            RunConfig(poisoners=(name,), countermeasures=("vanilla",), profile="paper"),
            get_registry(),
            load_data=False,
        )
    quick = resolve(
        RunConfig(poisoners=(name,), countermeasures=("vanilla",), profile="quick"),
        get_registry(),
        load_data=False,
    )
    assert quick.spec("poisoner", name).params["sig_backend"] == "offline"
    assert quick.spec("poisoner", name).params["iterations"] == 600


def test_built_in_profiles_carry_no_plugin_tables():
    """Every built-in name takes its scale from its class's presets or, where it shares a class
    with another name (em / em-class), from its registration's; a table in a profile would be
    a second place to change the same setting."""
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        tables = tomllib.loads(path.read_text()).get("plugins", {})
        assert not tables, f"{path.name}: [plugins.{next(iter(tables))}] belongs in a preset"


class _Shared(Countermeasure):
    @dataclass(frozen=True)
    class Params:
        repeats: int = bounded(5, ge=1)
        fraction: float = bounded(0.25, ge=0, le=1)

    presets = {"smoke": {"repeats": 3, "fraction": 0.5}}


class _SharedPlugin:
    @hookimpl
    def register_countermeasures(self, register):
        register("shared", _Shared)
        register("shared-lite", _Shared, presets={"smoke": {"repeats": 1}, "quick": {"repeats": 2}})
        register("shared-bad", _Shared, presets={"smoke": {"repeets": 1}}, hidden_from_all=True)


def test_a_registration_gives_a_name_that_shares_a_class_presets_of_its_own():
    registry = isolated_registry(minimal_plugins(), _SharedPlugin())
    try:
        plans = {
            p: resolve(
                RunConfig(countermeasures=("shared", "shared-lite"), poisoners=("random-noise",),
                          victims=("tiny",), profile=p),
                registry,
                load_data=False,
            )
            for p in ("smoke", "quick")
        }  # fmt: skip
        params = {(p, n): dict(plan.spec("countermeasure", n).params) for p, plan in plans.items()
                  for n in ("shared", "shared-lite")}  # fmt: skip
        assert params[("smoke", "shared")] == {"repeats": 3, "fraction": 0.5}
        # the registration's preset lies on the class's, key by key
        assert params[("smoke", "shared-lite")] == {"repeats": 1, "fraction": 0.5}
        assert params[("quick", "shared")] == {"repeats": 5, "fraction": 0.25}
        assert params[("quick", "shared-lite")] == {"repeats": 2, "fraction": 0.25}
        with pytest.raises(
            PluginError,
            match="'shared-bad' ships a 'smoke' preset with unknown parameter 'repeets'",
        ):
            resolve(RunConfig(countermeasures=("shared-bad",), poisoners=("random-noise",),
                              victims=("tiny",), profile="smoke"), registry, load_data=False)  # fmt: skip
    finally:
        set_host(None)


def test_every_built_in_preset_names_parameters_of_its_class():
    registry = get_registry()
    for names in registry.entries.values():
        for name, entry in names.items():
            if entry.distribution != "ueb":
                continue
            cls = entry.load_class()
            for scale, preset in entry.presets().items():
                assert scale in ("smoke", "quick", "paper"), (name, scale)
                parse_params(cls.Params, dict(preset), where=f"{name} presets[{scale}]")


# --------------------------------------------------------------------------- typed plugins


@dataclass(frozen=True)
class ShiftParams:
    amount: float = bounded(0.1, ge=0, le=1)


class TypedShift(Countermeasure[ShiftParams]):
    """A data-stage countermeasure naming a module-level Params type."""

    Params = ShiftParams

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        x = (train.float01() + self.params.amount).clamp(0, 1)
        return train.with_images(x)


class NestedShift(Countermeasure["NestedShift.Params"]):
    """The same with a nested Params named by a string."""

    @dataclass(frozen=True)
    class Params:
        amount: float = bounded(0.2, ge=0, le=1)

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        return train.with_images((train.float01() + self.params.amount).clamp(0, 1))


class PlainShift(Countermeasure):
    """Old style: no type argument; `params` is Any to a type checker, the same at run time."""

    @dataclass(frozen=True)
    class Params:
        amount: float = bounded(0.3, ge=0, le=1)

    def transform_train_set(self, train: ImageSet, ctx: RunContext) -> ImageSet:
        return train.with_images((train.float01() + self.params.amount).clamp(0, 1))


@pytest.mark.parametrize(
    ("cls", "amount"), [(TypedShift, 0.1), (NestedShift, 0.2), (PlainShift, 0.3)]
)
def test_typed_and_untyped_plugins_take_their_params_the_same_way(tmp_path, cls, amount):
    assert cls().params == cls.Params(amount=amount)
    assert cls(cls.Params(amount=0.5), name="shift").params.amount == 0.5
    data = make_imageset(per_class=4, num_classes=3, size=16)
    shifted = cls().transform_train_set(data, None)  # type: ignore[arg-type]
    assert float((shifted.float01() - data.float01()).max()) == pytest.approx(amount, abs=1 / 255)
    check_countermeasure(cls, data=data, workdir=tmp_path)


def test_a_plugin_without_params_gets_the_empty_params():
    class Bare(Victim):
        def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> Any:
            raise NotImplementedError

    assert Bare.Params is NoParams and Bare().params == NoParams()
    with pytest.raises(ConfigError, match="width"):
        parse_params(Bare.Params, {"width": 8}, where="bare")
