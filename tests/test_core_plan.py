"""The Plan: every input in a key, equal values equal ids, every problem before any work."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from core_helpers import isolated_registry, minimal_plugins

from ueb.config import RunConfig
from ueb.errors import ConfigError, PluginError
from ueb.hookspecs import hookimpl
from ueb.interfaces import Budget, Countermeasure, Poisoner, Requirement
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.progress import silent
from ueb.runner import MatrixRunner

CALLS = {"poison": 0, "training_lr": []}


class ShiftPoisoner(Poisoner):
    """Class-wise +level/255; records the training protocol its context carries."""

    @dataclass(frozen=True)
    class Params:
        eps: float = 8 / 255
        level: int = 4

    def budget(self):
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self):
        return False

    def poison(self, train, ctx):
        CALLS["poison"] += 1
        CALLS["training_lr"].append(ctx.training.lr)
        return (train.float01() + self.params.level / 255).clamp(0, 1)


class L2Poisoner(ShiftPoisoner):
    def budget(self):
        return Budget("l2", self.params.eps)


class SurrogateUser(ShiftPoisoner):
    """Builds the `tiny` victim through the context, declared or not (`declare`)."""

    @dataclass(frozen=True)
    class Params:
        eps: float = 8 / 255
        level: int = 4
        declare: bool = True
        width: int = 8

    def requires(self):
        return (
            [Requirement("victim", "tiny", {"width": self.params.width})]
            if self.params.declare
            else []
        )

    def poison(self, train, ctx):
        ctx.plugin("victim", "tiny", {"width": self.params.width})
        return super().poison(train, ctx)


class WrongStage(Countermeasure):
    stage = "train"


class _Plugins:
    @hookimpl
    def register_poisoners(self, register):
        register("shift", ShiftPoisoner)
        register("l2shift", L2Poisoner)
        register("needy", SurrogateUser)

    @hookimpl
    def register_countermeasures(self, register):
        register("wrong-stage", WrongStage, stage="data")


@pytest.fixture
def registry():
    reg = isolated_registry(minimal_plugins(), _Plugins())
    yield reg
    set_host(None)


def _config(**kw):
    return RunConfig(
        **{
            "poisoners": ("shift",),
            "countermeasures": ("identity",),
            "victims": ("tiny",),
            "profile": "smoke",
            **kw,
        }
    )


def test_the_same_value_written_two_ways_gives_one_cell_id(registry):
    a = resolve(_config(params={"shift": {"eps": "8/255"}}), registry)
    b = resolve(_config(params={"shift": {"eps": 0.03137254901960784}}), registry)
    c = resolve(_config(), registry)  # the default is 8/255 too
    ids = [{cell.id for cell in p.cells} for p in (a, b, c)]
    assert ids[0] == ids[1] == ids[2]
    other = resolve(_config(params={"shift": {"eps": "4/255"}}), registry)
    assert {cell.id for cell in other.cells if cell.poisoner == "shift"}.isdisjoint(ids[0])


def test_training_settings_enter_poison_keys_and_reach_the_plugin(registry, tmp_path, monkeypatch):
    """Two profiles that differ only in training.lr must not share a cached poison."""
    from ueb.profile import load_profile

    smoke = load_profile("smoke")
    other = type(smoke)(
        **{
            **smoke.__dict__,
            "training": type(smoke.training)(**{**smoke.training.__dict__, "lr": 0.02}),
        }
    )
    base = resolve(_config(cache_dir=str(tmp_path / "c")), registry)
    monkeypatch.setattr("ueb.plan.load_profile", lambda _name: other)
    changed = resolve(_config(cache_dir=str(tmp_path / "c")), registry)
    assert base.poison_key("fashion-mnist", "shift", 0) != changed.poison_key(
        "fashion-mnist", "shift", 0
    )
    assert {c.id for c in base.cells}.isdisjoint({c.id for c in changed.cells})
    CALLS["poison"], CALLS["training_lr"] = 0, []
    MatrixRunner(base, registry, tmp_path / "a", silent(), log=lambda m: None).execute()
    MatrixRunner(changed, registry, tmp_path / "b", silent(), log=lambda m: None).execute()
    assert CALLS["poison"] == 2 and CALLS["training_lr"] == [smoke.training.lr, 0.02]


def test_the_numerics_a_device_implies_enter_every_identity(registry, monkeypatch):
    """`precision="auto"` (the paper profile's) trains in bf16 on CUDA and fp32 on a CPU, and
    the device itself is part of the numerics: a GPU result and a CPU result never share a cell
    id or a poison, whatever precision was asked for."""
    monkeypatch.setattr("ueb.plan.load_profile", _smoke_with(precision="auto", channels_last=True))
    cpu = resolve(_config(device="auto"), registry)
    assert cpu.training["precision"] == "fp32" and cpu.training["channels_last"] is True
    assert cpu.profile.training.precision == "fp32"  # what the trainer and plugins receive
    assert cpu.numerics.device == "cpu" and cpu.numerics.threads == 1
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("ueb.numerics.accelerator_of", lambda kind, device: "Some GPU")
    gpu = resolve(_config(device="auto"), registry)
    assert gpu.training["precision"] == "bf16" and gpu.training["channels_last"] is True
    assert {c.id for c in cpu.cells}.isdisjoint({c.id for c in gpu.cells})
    assert cpu.poison_key("fashion-mnist", "shift", 0) != gpu.poison_key(
        "fashion-mnist", "shift", 0
    )
    monkeypatch.setattr("ueb.plan.load_profile", _smoke_with(precision="fp32", channels_last=False))
    on_gpu = resolve(_config(device="auto"), registry)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    on_cpu = resolve(_config(device="cpu"), registry)
    assert on_gpu.training["precision"] == on_cpu.training["precision"] == "fp32"
    assert {c.id for c in on_gpu.cells}.isdisjoint({c.id for c in on_cpu.cells})


@pytest.mark.parametrize(
    "change",
    [
        {"training": {"threads": 2}},
        {"training": {"channels_last": False}},
        {"training": {"deterministic": True}},
        {"env": ("ONEDNN_MAX_CPU_ISA", "AVX2")},
        {"env": ("ATEN_CPU_CAPABILITY", "default")},
        {"core": "999"},
    ],
    ids=["threads", "layout", "deterministic", "onednn-isa", "aten-isa", "core-protocol"],
)
def test_every_numerics_lever_enters_cell_ids_and_poison_keys(registry, monkeypatch, change):
    """Threads per process, memory format, deterministic mode, the ISA caps and the core's own
    protocol version each change numbers, so each gives other ids (never a silent reuse)."""
    monkeypatch.setattr("ueb.plan.load_profile", _smoke_with(channels_last=True))
    base = resolve(_config(device="cpu"), registry)
    if "training" in change:
        settings = {"channels_last": True, **change["training"]}
        monkeypatch.setattr("ueb.plan.load_profile", _smoke_with(**settings))
    if "env" in change:
        monkeypatch.setenv(*change["env"])
        if change["env"][0] == "ATEN_CPU_CAPABILITY":  # torch reads it at start-up only
            monkeypatch.setattr("ueb.numerics.accelerator_of", lambda kind, device: "DEFAULT")
    if "core" in change:
        import ueb.numerics

        monkeypatch.setattr(ueb.numerics.Numerics.__init__, "__defaults__", (change["core"],))
    other = resolve(_config(device="cpu"), registry)
    assert {c.id for c in base.cells}.isdisjoint({c.id for c in other.cells})
    assert base.poison_key("fashion-mnist", "shift", 0) != other.poison_key(
        "fashion-mnist", "shift", 0
    )
    assert base.describe()["numerics"] != other.describe()["numerics"]


def _smoke_with(**training):
    from dataclasses import replace

    from ueb.profile import load_profile

    def load(name):
        profile = load_profile(name)
        return replace(profile, training=replace(profile.training, **training))

    return load


def test_typos_bad_seeds_and_impossible_budgets_fail_in_the_plan(registry):
    with pytest.raises(ConfigError, match="did you mean 'level'"):
        resolve(_config(params={"shift": {"levl": 3}}), registry)
    # a typo for a plugin the run does not select still names the parameter it meant
    with pytest.raises(ConfigError, match="unknown parameter 'widht'.*did you mean 'width'"):
        resolve(
            _config(
                countermeasures=("identity",), params={"tiny": {"widht": 2}}, victims=("tiny",)
            ),
            registry,
        )
    with pytest.raises(ConfigError, match="should be an integer"):
        resolve(_config(params={"shift": {"level": "many"}}), registry)
    with pytest.raises(ConfigError, match="seed -1"):
        resolve(_config(seeds=(-1,)), registry)
    with pytest.raises(ConfigError, match="impossible"):
        resolve(_config(params={"shift": {"eps": 2.0}}), registry)
    with pytest.raises(ConfigError, match="impossible"):
        resolve(_config(poisoners=("l2shift",), params={"l2shift": {"eps": 1e9}}), registry)
    resolve(_config(poisoners=("l2shift",), params={"l2shift": {"eps": 1.0}}), registry)


def test_a_plugin_may_build_only_what_it_declares(registry, tmp_path):
    plan = resolve(
        _config(poisoners=("needy",), cache_dir=str(tmp_path / "c"), include_clean=False), registry
    )
    assert plan.spec("poisoner", "needy").requires[0].name == "tiny"
    assert (
        MatrixRunner(plan, registry, tmp_path / "ok", silent(), log=lambda m: None).execute().failed
        == 0
    )
    wider = resolve(
        _config(
            poisoners=("needy",), params={"needy": {"width": 16}}, cache_dir=str(tmp_path / "c")
        ),
        registry,
    )
    assert wider.poison_key("fashion-mnist", "needy", 0) != plan.poison_key(
        "fashion-mnist", "needy", 0
    )
    undeclared = resolve(
        _config(
            poisoners=("needy",),
            params={"needy": {"declare": False}},
            cache_dir=str(tmp_path / "c"),
            include_clean=False,
        ),
        registry,
    )
    runner = MatrixRunner(undeclared, registry, tmp_path / "bad", silent(), log=lambda m: None)
    runner.execute()
    (record,) = runner.store.records()
    assert record.status == "error" and "does not declare" in record.error


def test_a_stage_declared_twice_and_differently_is_reported(registry):
    with pytest.raises(PluginError, match="stage='data'.*stage = 'train'"):
        resolve(_config(countermeasures=("wrong-stage",)), registry)


def test_a_damaged_cached_poison_is_recomputed_not_used(registry, tmp_path, capsys):
    plan = resolve(_config(cache_dir=str(tmp_path / "c"), include_clean=False), registry)
    CALLS["poison"] = 0
    MatrixRunner(plan, registry, tmp_path / "a", silent(), log=lambda m: None).execute()
    key = plan.poison_key("fashion-mnist", "shift", 0)
    images = tmp_path / "c" / "poisons" / key / "images.npy"
    np.save(images, np.full_like(np.load(images), 255))  # all white: far outside 8/255
    runner = MatrixRunner(plan, registry, tmp_path / "b", silent(), log=lambda m: None)
    # cell b reuses the finished cell of run a only through the cell index: drop it to force a poison load
    import shutil

    shutil.rmtree(tmp_path / "c" / "cells")
    runner.execute()
    assert CALLS["poison"] == 2
    assert "poison cache entry" in capsys.readouterr().err
    (record,) = runner.store.records()
    assert record.poison_facts["linf_max"] == pytest.approx(4 / 255, abs=1e-6)


def test_finished_cells_are_reused_across_run_directories(registry, tmp_path):
    """The clean row every poisoner's run shares is computed once per cache."""
    first = resolve(_config(cache_dir=str(tmp_path / "c")), registry)
    MatrixRunner(first, registry, tmp_path / "a", silent(), log=lambda m: None).execute()
    second = resolve(
        _config(
            poisoners=("l2shift",), params={"l2shift": {"eps": 1.0}}, cache_dir=str(tmp_path / "c")
        ),
        registry,
    )
    runner = MatrixRunner(second, registry, tmp_path / "b", silent(), log=lambda m: None)
    assert runner.preview()["reusable"] == 1  # the clean cell
    summary = runner.execute()
    assert summary.skipped == 1 and summary.ok == 1
    clean = [r for r in runner.store.records() if r.poisoner == "clean"][0]
    assert clean.extra["reused_from"].endswith("a")


def test_local_files_replaced_in_place_change_the_poison_key(tmp_path):
    import os

    from ueb.registry import get_registry

    set_host(None)
    weights = tmp_path / "extractor.pt"
    weights.write_bytes(b"a" * 64)

    def key():
        config = RunConfig(
            poisoners=("deephiding",),
            countermeasures=("vanilla",),
            profile="smoke",
            params={"deephiding": {"extractor_weights": str(weights)}},
        )
        return resolve(config, get_registry()).poison_key("fashion-mnist", "deephiding", 0)

    first = key()
    assert key() == first
    weights.write_bytes(b"b" * 64)  # same path, same size, other weights
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert key() != first
    weights.unlink()
    with pytest.raises(ConfigError, match="extractor weights .* do not exist"):
        key()


class PatchPoisoner(Poisoner):
    """A class-wise shortcut no victim can miss: a colour tint per class on grey images (crop
    and flip cannot move it)."""

    @dataclass(frozen=True)
    class Params:
        pass

    def budget(self):
        return Budget("unbounded")

    @property
    def sample_wise(self):
        return False

    def poison(self, train, ctx):
        import torch

        tints = (
            torch.rand(
                train.num_classes, train.channels, 1, 1, generator=torch.Generator().manual_seed(0)
            )
            * 0.4
        )
        return (train.float01() + tints[train.labels]).clamp(0, 1)


def test_the_shortcut_probe_is_stored_per_cell_and_says_latched(tmp_path, monkeypatch):
    from ueb.profile import load_profile

    class _Patch:
        @hookimpl
        def register_poisoners(self, register):
            register("patch", PatchPoisoner)

    registry = isolated_registry(minimal_plugins(), _Patch())
    try:
        smoke = load_profile("smoke")
        longer = type(smoke.training)(
            **{
                **smoke.training.__dict__,
                "iterations": 150,
                "milestones": (120,),
                "eval_every": 150,
            }
        )
        monkeypatch.setattr(
            "ueb.plan.load_profile",
            lambda _name: type(smoke)(**{**smoke.__dict__, "training": longer}),
        )
        plan = resolve(_config(poisoners=("patch",), cache_dir=str(tmp_path / "c")), registry)
        runner = MatrixRunner(plan, registry, tmp_path / "r", silent(), log=lambda m: None)
        runner.execute()
        records = {r.poisoner: r for r in runner.store.records()}
        probe = records["patch"].probe
        assert probe["latched"] and probe["target_rate"] > 0.5 and probe["train_acc"] > 90, probe
        assert records["clean"].probe == {}  # nothing to probe on clean data
    finally:
        set_host(None)


def test_matrix_files_and_profiles_name_plugin_settings_alike(tmp_path, registry):
    from ueb.config import build_config, load_matrix_file

    for table in ("plugins", "params"):  # [params.NAME] is the older spelling, read the same way
        path = tmp_path / f"{table}.toml"
        path.write_text(
            f'poisoners = ["shift"]\ncountermeasures = ["identity"]\nvictims = ["tiny"]\nprofile = "smoke"\n[{table}.shift]\nlevel = 2\n'
        )
        plan = resolve(build_config(load_matrix_file(path), {}), registry)
        assert plan.spec("poisoner", "shift").params["level"] == 2
