"""Every registered poisoner and every registered countermeasure, smoke profile, end to end.

This is the CI-scale promise of the whole suite: each plugin runs through the real runner
(cache, integrity checks, store, report) without a single failed cell. Sized per plugin: every
poisoner once (under vanilla training) and every countermeasure once (against random noise),
not the full product, which repeats each plugin's run a few dozen times and tells nothing more.
"""

from __future__ import annotations

import pytest

from ueb.config import RunConfig
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.progress import silent
from ueb.registry import get_registry
from ueb.report import build_table, to_markdown
from ueb.runner import MatrixRunner


@pytest.mark.slow
@pytest.mark.parametrize(
    "poisoners,countermeasures",
    [(("all",), ("vanilla",)), (("random-noise",), ("all",))],
    ids=["every-poisoner", "every-countermeasure"],
)
def test_every_plugin_runs_end_to_end_at_smoke_scale(tmp_path, poisoners, countermeasures):
    set_host(None)
    registry = get_registry()
    failed_plugins = [r for r in registry.host.records.values() if not r.ok]
    assert not failed_plugins, (
        f"built-in plugins failed to load: {[(r.name, r.error) for r in failed_plugins]}"
    )
    run = resolve(
        RunConfig(
            poisoners=poisoners,
            countermeasures=countermeasures,
            profile="smoke",
            cache_dir=str(tmp_path / "cache"),
            save_models="none",
        ),
        registry,
    )
    assert len(run.countermeasures) >= (19 if countermeasures == ("all",) else 1)
    assert len(run.poisoners) >= (10 if poisoners == ("all",) else 2)
    runner = MatrixRunner(run, registry, tmp_path / "run", silent(), log=lambda m: None)
    summary = runner.execute()
    records = runner.store.records()
    errors = [(r.poisoner, r.countermeasure, r.error) for r in records if r.status != "ok"]
    assert not errors, errors
    assert summary.ok == len(run.poisoners) * len(run.countermeasures)
    table = to_markdown(build_table(records, "final", runner.store.manifest()["config"]))
    for name in (*run.poisoners, *run.countermeasures):
        assert name in table
