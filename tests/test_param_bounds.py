"""Every numeric parameter of every registered plugin has a range, and a value outside it stops
the plan with one line naming the parameter, the value and the range, before any work."""

from __future__ import annotations

import dataclasses
import time
import typing

import pytest
from core_helpers import run_cli

from ueb.errors import ConfigError
from ueb.params import bounded, bounds_of, parse_params
from ueb.registry import get_registry
from ueb.testing import is_numeric


def _numeric_fields():
    registry = get_registry()
    for kind, entries in registry.entries.items():
        for name, entry in entries.items():
            cls = entry.load_class()
            hints = typing.get_type_hints(cls.Params)
            for f in dataclasses.fields(cls.Params):
                if f.init and is_numeric(hints.get(f.name)):
                    yield kind, name, entry, f, hints[f.name]


FIELDS = list(_numeric_fields())


def test_every_numeric_parameter_of_every_plugin_declares_a_range():
    missing = [
        f"{kind} {name}.{f.name}" for kind, name, _e, f, _t in FIELDS if bounds_of(f) is None
    ]
    assert not missing, "numeric parameters without ueb.params.bounded(...): " + ", ".join(missing)
    assert len(FIELDS) > 150  # the walk below covers the built-in plugins, not a handful


def test_every_out_of_range_value_is_rejected_naming_parameter_value_and_range():
    checked = 0
    for _kind, _name, entry, f, tp in FIELDS:
        rng = bounds_of(f)
        assert rng is not None
        listy = typing.get_origin(tp) in (list, tuple) or any(
            typing.get_origin(a) in (list, tuple) for a in typing.get_args(tp)
        )
        for bad in rng.outside():
            value = [bad] if listy else bad
            with pytest.raises(ConfigError) as info:
                entry.create({f.name: value})
            line = info.value.line()
            assert f"'{f.name}'" in line and rng.describe() in line, line
            checked += 1
    assert checked >= len(FIELDS)


@pytest.mark.parametrize(
    "args, names",
    [
        (["-p", "em", "--param", "em.steps=-3"], ("steps", "-3")),
        (["-p", "random-noise", "-c", "mixup", "--param", "mixup.prob=-1"], ("prob", "-1")),
        (
            ["-p", "random-noise", "-c", "jpeg10", "--param", "jpeg10.quality=500"],
            ("quality", "500"),
        ),
        (["-p", "random-noise", "--param", "random-noise.eps=1/0"], ("eps", "1/0")),
        (["-p", "random-noise", "--param", "random-noise.eps=0"], ("eps", "0")),
    ],
    ids=["em-steps", "mixup-prob", "jpeg-quality", "divide-by-zero", "zero-eps"],
)
def test_the_cli_exits_2_in_seconds_before_any_poison(tmp_path, args, names):
    start = time.perf_counter()
    res = run_cli(
        "run", *args, "-c" if "-c" not in args else "--quiet", *(["vanilla"] if "-c" not in args else []),
        "--profile", "smoke", "--run-dir", str(tmp_path / "run"),
        env={"UEB_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in names), res.stderr
    assert not (tmp_path / "cache" / "poisons").exists()  # nothing computed
    assert elapsed < 60


def test_bounds_accept_the_edges_and_check_defaults_and_list_items():
    @dataclasses.dataclass(frozen=True)
    class P:
        p: float = bounded(0.5, ge=0, le=1)
        n: int | None = bounded(None, ge=1)
        sizes: tuple[int, ...] = bounded((3, 5), ge=1)

    assert parse_params(P, {"p": 0, "n": 1}, "x").p == 0.0
    assert parse_params(P, {"p": 1}, "x").p == 1.0
    for bad in ({"p": 1.0000001}, {"p": -1e-9}, {"n": 0}, {"sizes": "3,0"}, {"p": "nan"}):
        with pytest.raises(ConfigError):
            parse_params(P, bad, "x")

    @dataclasses.dataclass(frozen=True)
    class Broken:
        p: float = bounded(2.0, le=1)  # a default out of its own range is a plugin bug

    with pytest.raises(ConfigError, match="'p' is 2.0"):
        parse_params(Broken, {}, "x")
