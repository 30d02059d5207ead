"""The nested design: poison seeds x victim seeds, with both variance components reported."""

from __future__ import annotations

import json

import pytest
from core_helpers import isolated_registry, minimal_plugins

from ueb.config import RunConfig
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.progress import silent
from ueb.report import build_table, to_json, to_markdown
from ueb.runner import MatrixRunner
from ueb.stats import nested_components


@pytest.fixture
def registry():
    reg = isolated_registry(minimal_plugins())
    yield reg
    set_host(None)


def test_variance_components_of_a_balanced_design():
    # poison means 10 and 20 (V=2 each, within variance 2): MS_B = 2 * 50 = 100, MS_W = 2
    c = nested_components([[9.0, 11.0], [19.0, 21.0]])
    assert c is not None and (c.poisons, c.victims) == (2, 2)
    assert c.victim_var == pytest.approx(2.0) and c.poison_var == pytest.approx((100 - 2) / 2)
    assert c.se == pytest.approx((100 / 4) ** 0.5)
    assert c.half_width == pytest.approx(12.706 * 5.0, rel=1e-3)  # df = P - 1 = 1
    assert nested_components([[1.0, 2.0]]) is None


def test_a_nested_run_trains_every_victim_seed_on_every_poison_seed(registry, tmp_path):
    cfg = RunConfig(
        poisoners=("random-noise",), countermeasures=("identity",), victims=("tiny",),
        profile="smoke", seeds=(0, 1), poison_seeds=(3, 4), cache_dir=str(tmp_path / "c"),
    )  # fmt: skip
    plan = resolve(cfg, registry)
    pairs = sorted((c.poisoner, c.poison_seed_used, c.seed) for c in plan.cells)
    assert pairs == [
        ("clean", 0, 0), ("clean", 1, 1),  # the clean row has no poison to vary
        ("random-noise", 3, 0), ("random-noise", 3, 1),
        ("random-noise", 4, 0), ("random-noise", 4, 1),
    ]  # fmt: skip
    assert len({c.id for c in plan.cells}) == 6 and len({c.poison_key for c in plan.cells}) == 4
    runner = MatrixRunner(plan, registry, tmp_path / "run", silent(), log=lambda m: None)
    runner.execute()
    recs = [r for r in runner.store.records() if r.poisoner == "random-noise"]
    assert sorted((r.poison_seed, r.seed) for r in recs) == [(3, 0), (3, 1), (4, 0), (4, 1)]
    digests = {r.poison_facts.get("sha256") or r.poison_facts.get("key") for r in recs}
    assert len(digests) == 2  # two poisons
    table = build_table(runner.store.records())
    value = next(r for r in table.rows if r.poisoner == "random-noise").cells["identity"]
    assert value.nested is not None and (value.nested.poisons, value.nested.victims) == (2, 2)
    assert "n=2x2 sd poison" in value.text()
    cell = json.loads(to_json(table))["rows"][1]["cells"]["identity"]
    assert cell["nested"]["poison_seeds"] == 2 and cell["nested"]["victim_variance"] >= 0
    # each number names its unit: the victim seed recurs, the poison seed tells them apart
    units = [(s["poison_seed"], s["seed"]) for s in cell["per_seed"]]
    assert units == [(3, 0), (3, 1), (4, 0), (4, 1)]
    assert "n=2x2" in to_markdown(table)
