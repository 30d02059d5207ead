"""One parameter, every entry point, one resolver: `ueb run`'s flags, a matrix file and a grid,
the worker, the analysis commands (a run's stored specs, and a run stored without them), the
Deep Hiding command line and the conformance kit all hand Deep Hiding the same typed values,
and each gets them from `ueb.plan_specs` (SpecResolver / bind_to / instantiate)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

import ueb.plan_specs as plan_specs
from ueb.analysis.rundata import RunData
from ueb.config import build_config, parse_param_flags
from ueb.interfaces import Countermeasure, Poisoner, Requirement
from ueb.params import as_dict
from ueb.plan import resolve
from ueb.profile import load_profile
from ueb.registry import get_registry
from ueb.testing import make_run_context, tiny_training

EPS = 4 / 255  # what the user writes as the string "4/255"
SMOKE = load_profile("smoke")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each use of the resolver module's steps."""
    seen: list[str] = []
    real_bind, real_instantiate = plan_specs.bind_to, plan_specs.instantiate

    def bind_to(instance: Any, training: Any, where: str) -> Any:
        seen.append(f"bind_to {instance.name}")
        return real_bind(instance, training, where)

    def instantiate(registry: Any, spec: Any) -> Any:
        seen.append(f"instantiate {spec.name}")
        return real_instantiate(registry, spec)

    monkeypatch.setattr(plan_specs, "bind_to", bind_to)
    monkeypatch.setattr(plan_specs, "instantiate", instantiate)
    return seen


def _smoke_iterations() -> int:
    """Deep Hiding's hider steps at smoke scale: its own preset (not its class default)."""
    entry = get_registry().get("poisoner", "deephiding")
    value = entry.presets()["smoke"]["iterations"]
    assert value != entry.load_class().Params().iterations
    return int(value)


def _plan(file_values: dict[str, Any] | None = None, flags: list[str] = ()) -> Any:
    config = build_config(
        file_values,
        {
            "profile": "smoke",
            "poisoners": ("deephiding",),
            "countermeasures": ("vanilla",),
            "params": parse_param_flags(list(flags), ("deephiding",)),
        },
    )
    return resolve(config, get_registry(), load_data=False)


def _typed(params: Any) -> tuple[float, int]:
    values = params if isinstance(params, dict) else as_dict(params)
    return float(values["eps"]), int(values["iterations"])


def test_run_flags_a_matrix_file_and_a_grid_resolve_alike(calls: list[str]) -> None:
    want = (pytest.approx(EPS), _smoke_iterations())
    by_flag = _plan(flags=["deephiding.eps=4/255"]).spec("poisoner", "deephiding")
    by_file = _plan({"params": {"deephiding": {"eps": "4/255"}}}).spec("poisoner", "deephiding")
    grid = _plan({"grid": {"deephiding": {"eps": ["4/255"]}}})
    (variant,) = grid.poisoners[1:]  # after the clean reference
    assert _typed(by_flag.params) == want
    assert _typed(by_file.params) == want
    assert _typed(grid.spec("poisoner", variant).params) == want
    assert "bind_to deephiding" in calls and f"bind_to {variant}" in calls
    # a worker builds a cell's plugin from the spec, with exactly its typed values
    from ueb.worker import CellWorker

    built = CellWorker.create(SimpleNamespace(registry=get_registry()), by_flag)  # type: ignore[arg-type]
    assert _typed(built.params) == want


def test_the_analysis_reads_a_runs_stored_specs_and_resolves_an_old_run_the_same_way(
    calls: list[str], tmp_path: Path
) -> None:
    plan = _plan(flags=["deephiding.eps=4/255"])
    stored = RunData(tmp_path, [], {"config": {**plan.describe()}})
    spec = stored.spec("poisoner", "deephiding")
    assert spec == plan.spec("poisoner", "deephiding")
    assert _typed(plan_specs.instantiate(get_registry(), spec).params) == (
        pytest.approx(EPS),
        _smoke_iterations(),
    )
    # a run stored before requirements carried their names still reads back, identity whole
    from ueb.plan_specs import spec_from_description

    for described in plan.describe()["specs"].values():
        unnamed = {
            **described,
            "requires": [
                {k: v for k, v in r.items() if k not in ("name", "entry")}
                for r in described["requires"]
            ],
        }
        assert (
            spec_from_description(unnamed).identity() == spec_from_description(described).identity()
        )
    # a run stored before manifests held specs: its profile and params, resolved again
    described = plan.describe()
    old = RunData(
        tmp_path,
        [],
        {"config": {k: v for k, v in described.items() if k != "specs"}},
    )
    calls.clear()
    again = old.spec("poisoner", "deephiding")
    assert "bind_to deephiding" in calls
    assert dict(again.params) == dict(spec.params)


def test_the_deep_hiding_command_line_resolves_as_a_run(calls: list[str]) -> None:
    from ueb_deephiding.cli import _setup

    dh, train, _ctx = _setup(
        "smoke", "fashion-mnist", "deephiding", ["eps=4/255"], None, None, "cpu"
    )
    assert _typed(dh.params) == (pytest.approx(EPS), _smoke_iterations())
    run_spec = _plan(flags=["deephiding.eps=4/255"]).spec("poisoner", "deephiding")
    assert as_dict(dh.params) == dict(run_spec.params)
    assert "bind_to deephiding" in calls and "instantiate deephiding" in calls
    assert len(train) == 10 * SMOKE.data.train_per_class


class _NeedsDeepHiding(Countermeasure):
    """A countermeasure that builds Deep Hiding through ctx.plugin, as a declared requirement."""

    stage: ClassVar[str] = "data"

    def requires(self) -> list[Requirement]:
        return [Requirement("poisoner", "deephiding", {"eps": "4/255"})]


def test_the_conformance_kit_resolves_a_requirement_and_a_class_as_a_run(
    calls: list[str], tmp_path: Path
) -> None:
    from ueb_deephiding.poisoner import DeepHiding

    from ueb.testing.declarations import _instantiate

    owner = _NeedsDeepHiding(_NeedsDeepHiding.Params(), name="needs-dh")
    ctx = make_run_context(tmp_path, owner=owner)
    dh = ctx.plugin("poisoner", "deephiding", {"eps": "4/255"})
    assert float(dh.params.eps) == pytest.approx(EPS)
    # a requirement's parameters are exactly the declared ones over the registered defaults
    run = plan_specs.SpecResolver(get_registry(), replace(SMOKE, training=tiny_training()))
    declared = run.spec_with("poisoner", "deephiding", "deephiding", {"eps": "4/255"})
    assert as_dict(dh.params) == dict(declared.params)
    checked = _instantiate(DeepHiding, Poisoner, {"eps": "4/255"}, tiny_training())
    assert float(checked.params.eps) == pytest.approx(EPS)
    assert sum(c.startswith("bind_to") for c in calls) >= 3
