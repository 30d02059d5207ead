"""Identical trainings run once, exactly; a table never depends on what filled the cache."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from core_helpers import FIXTURES, isolated_registry, minimal_plugins, run_cli

from ueb.cellindex import CellIndex
from ueb.config import RunConfig
from ueb.hookspecs import hookimpl
from ueb.interfaces import Budget, Countermeasure, Poisoner
from ueb.plan import resolve
from ueb.plugins import set_host
from ueb.progress import silent
from ueb.report import build_table
from ueb.runner import MatrixRunner
from ueb.store import Store

TRAINED: list[str] = []


class ClassShift(Poisoner):
    """A class-wise +k/255 shift (k = class index % 5)."""

    @dataclass(frozen=True)
    class Params:
        pass

    def budget(self):
        return Budget("linf", 8 / 255)

    @property
    def sample_wise(self):
        return False

    def poison(self, train, ctx):
        shift = (train.labels % 5).float().view(-1, 1, 1, 1) / 255
        return (train.float01() + shift).clamp(0, 1)


class NoOp(Countermeasure):
    """Data stage that returns its input: its trainings equal vanilla's."""

    stage = "data"


class Quantise(Countermeasure):
    """Data stage that rounds to 8 bits, the identity on 8-bit images (like a 0.1-sigma blur)."""

    stage = "data"

    def transform_train_set(self, train, ctx):
        return train.with_images(train.float01())


class SqueezeTrainOnly(Countermeasure):
    """Data stage with an optional test-time transform, off (as ISS without `test_too`): it
    overrides `transform_test_set` but returns the test set it was given."""

    stage = "data"

    @dataclass(frozen=True)
    class Params:
        test_too: bool = False

    def transform_train_set(self, train, ctx):
        return train.with_images(train.float01())

    def transform_test_set(self, test, ctx):
        return (
            test.with_images((test.float01() * 0.5).clamp(0, 1)) if self.params.test_too else test
        )


class Brighten(Countermeasure):
    """Train stage: changes every batch, so it trains alone."""

    stage = "train"

    def augment(self, batch, step):
        batch.x = (batch.x + 0.1).clamp(0, 1)
        return batch


class _Plugins:
    @hookimpl
    def register_poisoners(self, register):
        register("shift", ClassShift)

    @hookimpl
    def register_countermeasures(self, register):
        register("noop", NoOp, stage="data")
        register("quantise", Quantise, stage="data")
        register("brighten", Brighten, stage="train")
        register("squeeze", SqueezeTrainOnly, stage="data")
        register("squeeze-test", SqueezeTrainOnly, stage="data", defaults={"test_too": True})


@pytest.fixture
def registry():
    reg = isolated_registry(minimal_plugins(), _Plugins())
    yield reg
    set_host(None)


def _runner(registry, tmp_path, cache, run, countermeasures, **kw):
    cfg = RunConfig(
        poisoners=("shift",),
        countermeasures=countermeasures,
        victims=("tiny",),
        profile="smoke",
        seeds=(0,),
        cache_dir=str(tmp_path / cache),
        **kw,
    )
    return MatrixRunner(
        resolve(cfg, registry), registry, tmp_path / run, silent(), log=lambda m: None
    )


def _by_cell(runner):
    return {(r.poisoner, r.countermeasure): r for r in runner.store.records()}


def test_identical_trainings_run_once_and_give_the_numbers_of_training_again(registry, tmp_path):
    shared = _runner(
        registry, tmp_path, "c1", "shared", ("identity", "noop", "quantise", "brighten")
    )
    shared.execute()
    recs = _by_cell(shared)
    for p in ("clean", "shift"):
        base = recs[(p, "identity")]
        for cm in ("noop", "quantise"):
            twin = recs[(p, cm)]
            assert twin.extra["training_key"] == base.extra["training_key"]
            assert twin.extra.get("training_from") == base.cell_id  # says where it came from
            assert (twin.final_acc, twin.peak_acc, twin.history) == (
                base.final_acc,
                base.peak_acc,
                base.history,
            )
        assert recs[(p, "brighten")].extra["training_key"] != base.extra["training_key"]
        assert "training_from" not in recs[(p, "brighten")].extra
    # Each countermeasure alone, every one in a cache of its own: nothing can be shared.
    for cm in ("noop", "quantise"):
        alone = _runner(registry, tmp_path, f"alone-{cm}", f"alone-{cm}", (cm,))
        alone.execute()
        for p in ("clean", "shift"):
            got = _by_cell(alone)[(p, cm)]
            assert "training_from" not in got.extra
            assert got.final_acc == recs[(p, cm)].final_acc  # bit for bit
            assert got.history == recs[(p, cm)].history
    # The table still shows every column.
    table = build_table(shared.store.records())
    assert table.columns == ["identity", "noop", "quantise", "brighten"]
    row = next(r for r in table.rows if r.poisoner == "shift")
    assert all(row.value(c).mean is not None for c in table.columns)


def test_a_tampered_cell_index_entry_is_not_reused(registry, tmp_path):
    first = _runner(registry, tmp_path, "c", "first", ("identity",))
    first.execute()
    truth = _by_cell(first)[("shift", "identity")]
    index = CellIndex(tmp_path / "c")
    path = index._path(truth.cell_id)
    blob = json.loads(path.read_text())
    blob["record"]["final_acc"] = 99.99  # edited by hand, checksum left as it was
    path.write_text(json.dumps(blob))
    assert index.get(truth.cell_id) is None
    second = _runner(registry, tmp_path, "c", "second", ("identity",))
    second.execute()
    again = _by_cell(second)[("shift", "identity")]
    assert "reused_from" not in again.extra
    assert again.final_acc == truth.final_acc != 99.99


def test_a_tampered_training_index_entry_is_trained_again(registry, tmp_path):
    first = _runner(registry, tmp_path, "c", "first", ("identity",))
    first.execute()
    truth = _by_cell(first)[("shift", "identity")]
    key = truth.extra["training_key"]
    path = tmp_path / "c" / "trainings" / key[:2] / f"{key}.json"
    blob = json.loads(path.read_text())
    blob["entry"]["result"]["final_acc"] = 99.99
    path.write_text(json.dumps(blob))
    second = _runner(registry, tmp_path, "c", "second", ("noop",))
    second.execute()
    twin = _by_cell(second)[("shift", "noop")]
    assert "training_from" not in twin.extra
    assert twin.final_acc == truth.final_acc


@pytest.mark.slow
def test_workers_never_change_a_cell_so_the_cache_history_does_not_matter(tmp_path):
    """A two-worker run on a cache a one-worker run filled gives exactly what a two-worker run
    on an empty cache gives: threads per process are numerics, not the worker count."""
    args = ["--plugins-dir", str(FIXTURES), "run", "-p", "random-noise", "-c", "identity,invert"]
    args += ["-v", "tiny", "--profile", "smoke", "-q"]

    def run(cache, name, workers):
        res = run_cli(
            *args, "--workers", workers, "--run-dir", str(tmp_path / name),
            env={"UEB_CACHE": str(tmp_path / cache)},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        return {r.cell_id: r for r in Store(tmp_path / name).records()}

    one = run("filled", "w1", "1")
    on_filled = run("filled", "w2-filled", "2")
    fresh = run("empty", "w2-fresh", "2")
    assert set(one) == set(on_filled) == set(fresh) and len(fresh) == 4
    for cell_id, want in fresh.items():
        assert on_filled[cell_id].extra.get("reused_from")  # the filled cache was used ...
        for got in (on_filled[cell_id], one[cell_id]):  # ... and changes nothing
            assert (got.final_acc, got.history) == (want.final_acc, want.history)


def test_an_optional_test_time_transform_that_is_off_shares_the_training(registry, tmp_path):
    """A countermeasure that could transform test inputs but did not (ISS without test_too)
    trains on vanilla's bytes and is evaluated on vanilla's test set: one training. With the
    test transform on it trains under its own key."""
    runner = _runner(registry, tmp_path, "c", "run", ("identity", "squeeze", "squeeze-test"))
    runner.execute()
    recs = _by_cell(runner)
    for p in ("clean", "shift"):
        base, off, on = (recs[(p, c)] for c in ("identity", "squeeze", "squeeze-test"))
        assert off.extra["training_key"] == base.extra["training_key"]
        assert off.extra.get("training_from") == base.cell_id
        assert (off.final_acc, off.history) == (base.final_acc, base.history)
        assert on.extra["training_key"] != base.extra["training_key"]
        assert "training_from" not in on.extra
