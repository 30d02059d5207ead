"""Regression on numbers: `ueb baseline accept`, `ueb check`, and the paper's Table I/II baseline."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from core_helpers import REPO, run_cli
from typer.testing import CliRunner

from ueb.analysis import baseline as bl
from ueb.store import CellRecord, Store

PAPER = REPO / "benchmarks" / "baselines" / "paper-table1.json"

MANIFEST = {
    "config": {"profile": "smoke", "datasets": ["fashion-mnist"], "poisoners": ["clean", "em"], "countermeasures": ["vanilla", "cutout"], "victims": ["fastnet"]},
    "environment": {
        "ueb": "0.1.0",
        "git": "abc123",
        "python": "3.11",
        "torch": "2.14.1",
        "device": "cpu",
        "device_name": "cpu (x86_64, 2 threads)",
        "platform": "Linux",
        "plugins": {"ueb_baselines": {"distribution": "ueb", "version": "0.1.0", "ok": True, "error": None}},
    },
    "run_id": "smoke-0123456789",
    "last_finished": "2025-01-01T00:00:00",
}


def _record(i, poisoner, cm, acc, seed=0, dataset="fashion-mnist", victim="fastnet", fraction=1.0, version="1"):
    return CellRecord(
        f"{dataset}-{poisoner}-{cm}-{victim}-{seed}-{fraction}",
        i,
        dataset,
        poisoner,
        cm,
        victim,
        seed,
        poison_fraction=fraction,
        profile="smoke",
        poisoner_version=version,
        countermeasure_version="1",
        victim_version="1",
        status="ok" if acc is not None else "error",
        final_acc=acc,
        peak_acc=acc,
        error=None if acc is not None else "RuntimeError: boom",
    )


def _make_run(path: Path, cells) -> Path:
    store = Store(path)
    store.set_manifest(**MANIFEST)
    for i, c in enumerate(cells):
        store.put(_record(i, *c) if isinstance(c, tuple) else c)
    store.close()
    return path


CELLS = [("clean", "vanilla", 81.0), ("clean", "cutout", 79.5), ("em", "vanilla", 12.25), ("em", "cutout", 30.0)]


def _cli(*args: str):
    from ueb.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _accept(run: Path, folder: Path, name: str = "base", *extra: str) -> Path:
    result = _cli("baseline", "accept", str(run), "--name", name, "--out-dir", str(folder), *extra)
    assert result.exit_code == 0, result.output
    return folder / f"{name}.json"


def test_check_passes_on_identical_numbers_and_fails_when_one_moves(tmp_path):
    run = _make_run(tmp_path / "run", CELLS)
    path = _accept(run, tmp_path / "baselines")
    ok = _cli("check", str(run), "--baseline", str(path))
    assert ok.exit_code == 0, ok.output
    assert "4 cells within 1 points" in " ".join(ok.output.split())

    store = Store(run)
    moved = store.records()[2]
    moved.final_acc = 14.0  # em x vanilla: +1.75 points
    store.put(moved)
    store.close()
    bad = _cli("check", str(run), "--baseline", str(path), "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["ok"] is False and report["within"] == 3
    assert [(m["cell"], m["baseline"], m["run"], m["delta"]) for m in report["moved"]] == [
        ("fashion-mnist | em | vanilla | fastnet | seed 0", "12.25", "14.00", "+1.75")
    ]
    assert _cli("check", str(run), "--baseline", str(path), "--tolerance", "2").exit_code == 0


def test_the_installed_command_exits_nonzero_when_a_check_fails(tmp_path):
    """Through `ueb.cli.main` (as CI calls it), not CliRunner: typer's `Exit(1)` must become the
    process's exit status, or a CI step running `ueb check` could never go red."""
    run = _make_run(tmp_path / "run", CELLS)
    path = _accept(run, tmp_path / "baselines")
    store = Store(run)
    moved = store.records()[2]
    moved.final_acc = 30.0
    store.put(moved)
    store.close()
    res = run_cli("check", str(run), "--baseline", str(path))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED" in res.stdout + res.stderr


def test_usage_errors_are_a_short_message_without_a_traceback():
    res = run_cli("show")
    assert res.returncode == 2
    assert "Missing argument" in res.stderr and "Traceback" not in res.stderr


def test_a_cell_that_now_fails_counts_as_moved(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    run = _make_run(tmp_path / "run", [*CELLS[:3], ("em", "cutout", None)])
    result = bl.compare(Store(run).records(), bl.load(base))
    assert [(m.entry.countermeasure, m.run_value) for m in result.moved] == [("cutout", None)]
    assert "cell failed: RuntimeError: boom" in result.moved[0].note


def test_missing_cells_are_listed_and_fail_only_with_strict(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    run = _make_run(tmp_path / "run", [*CELLS[:3], ("em", "mixup", 40.0)])
    result = bl.compare(Store(run).records(), bl.load(base))
    assert [e.countermeasure for e in result.missing_in_run] == ["cutout"]
    assert [e.countermeasure for e in result.missing_in_baseline] == ["mixup"]
    assert result.ok and result.within == 3
    loose = _cli("check", str(run), "--baseline", str(base))
    assert loose.exit_code == 0 and "1 cells in the baseline but not in the run" in loose.output
    assert _cli("check", str(run), "--baseline", str(base), "--strict").exit_code == 1


def test_accept_round_trips_with_provenance(tmp_path):
    run = _make_run(tmp_path / "run", [*CELLS, _record(9, "em", "vanilla", 13.0, seed=1), _record(10, "em", "vanilla", 20.0, fraction=0.4)])
    path = _accept(run, tmp_path / "b", "smoke-cpu", "--tolerance", "0.5")
    loaded = bl.load(path)
    assert loaded.name == "smoke-cpu" and loaded.tolerance == 0.5
    assert {(e.poisoner, e.countermeasure, e.seed, e.fraction): e.accuracy for e in loaded.cells} == {
        ("clean", "vanilla", 0, 1.0): 81.0,
        ("clean", "cutout", 0, 1.0): 79.5,
        ("em", "vanilla", 0, 1.0): 12.25,
        ("em", "cutout", 0, 1.0): 30.0,
        ("em", "vanilla", 1, 1.0): 13.0,
        ("em", "vanilla", 0, 0.4): 20.0,
    }
    p = loaded.provenance
    assert (p["device"], p["device_name"], p["torch"], p["git"], p["profile"], p["run_id"]) == (
        "cpu", "cpu (x86_64, 2 threads)", "2.14.1", "abc123", "smoke", "smoke-0123456789"
    )  # fmt: skip
    assert p["plugins"] == {"ueb_baselines": "ueb 0.1.0"} and p["accepted"][:2] == "20"
    assert loaded.cells[0].versions == {"poisoner": "1", "countermeasure": "1", "victim": "1"}
    bl.save(loaded, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()  # stable on a round trip
    assert _cli("check", str(run), "--baseline", str(path)).exit_code == 0


def test_a_moved_cell_whose_plugin_version_changed_says_so(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    run = _make_run(tmp_path / "run", [*CELLS[:2], _record(2, "em", "vanilla", 25.0, version="2"), CELLS[3]])
    (m,) = bl.compare(Store(run).records(), bl.load(base)).moved
    assert m.note == "version changed: poisoner v1->v2"


def test_seedless_entries_match_every_seed(tmp_path):
    baseline = tmp_path / "paper.json"
    baseline.write_text(
        json.dumps(
            {"name": "p", "tolerance": 5, "cells": [{"dataset": "cifar10", "poisoner": "deephiding", "countermeasure": "vanilla", "victim": "resnet18", "seed": None, "accuracy": 10.08}]}
        )
    )
    cells = [_record(i, "deephiding", "vanilla", acc, seed=s, dataset="cifar10", victim="resnet18") for i, (s, acc) in enumerate([(0, 12.0), (1, 16.0)])]
    result = bl.compare(Store(_make_run(tmp_path / "run", cells)).records(), bl.load(baseline))
    assert result.within == 1 and [(m.seed, m.delta) for m in result.moved] == [(1, pytest.approx(5.92))]
    assert result.missing_in_run == [] and result.missing_in_baseline == []


def test_bad_baselines_are_one_clear_error(tmp_path):
    from ueb.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline 'nope' not found"):
        bl.load("nope")
    broken = tmp_path / "b.json"
    broken.write_text('{"cells": [{"dataset": "x"}]}')
    with pytest.raises(ConfigError, match="cell 0 lacks poisoner, countermeasure, victim, accuracy"):
        bl.load(broken)
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        bl.load(broken)
    with pytest.raises(ConfigError, match="tolerance -1.0 is negative"):
        bl.compare([], bl.Baseline("x", []), -1.0)


# --------------------------------------------------------------------------- the paper baseline


def test_paper_baseline_holds_tables_one_and_two_under_registry_names():
    from ueb.registry import get_registry

    paper = bl.load(PAPER)
    assert paper.tolerance == 5.0 and paper.provenance["profile"] == "paper" and "ResNet-18" in paper.provenance["victim"]
    by_key = {(e.dataset, e.poisoner, e.countermeasure): e for e in paper.cells}
    assert by_key[("cifar10", "deephiding", "vanilla")].accuracy == 10.08  # DH(C), Table I
    assert by_key[("cifar100", "deephiding", "vanilla")].accuracy == 1.22
    assert by_key[("imagenet-subset", "deephiding", "vanilla")].accuracy == 2.42
    assert by_key[("cifar10", "deephiding", "orthogonal-projection")].accuracy == 10.00  # Table II
    assert by_key[("cifar10", "ops", "at-linf")].accuracy == 9.42
    assert len(paper.cells) == (10 + 10 + 7) * 14 + 10 * 4
    assert all(e.seed is None and e.victim == "resnet18" and e.fraction == 1.0 and e.source for e in paper.cells)
    registry = get_registry()
    for kind, attr in (("poisoner", "poisoner"), ("countermeasure", "countermeasure"), ("dataset", "dataset"), ("victim", "victim")):
        names = {getattr(e, attr) for e in paper.cells}
        assert names <= set(registry.names(kind)), names - set(registry.names(kind))


def test_paper_baseline_summaries_agree_with_its_cells_except_the_papers_own_slips():
    """The printed Mean/Max of every row against the transcribed cells: a transcription check."""
    data = json.loads(PAPER.read_text())
    paper = bl.load(PAPER)
    slips = []
    for row in data["rows"]:
        table = "Table I" if row["source"] == "Table I" else "Table II"
        vals = [e.accuracy for e in paper.cells if (e.dataset, e.poisoner) == (row["dataset"], row["poisoner"]) and e.source.startswith(table + ",")]
        assert len(vals) == (14 if table == "Table I" else 4)
        if abs(statistics.fmean(vals) - row["mean"]) > 0.015:
            slips.append(("mean", row["dataset"], row["poisoner"]))
        if max(vals) != row["max"]:
            slips.append(("max", row["dataset"], row["poisoner"]))
    # Both are printed that way in the paper and listed in the baseline's notes.
    assert slips == [("mean", "cifar10", "deephiding-s"), ("max", "cifar100", "ops")]
    assert len(data["notes"]) == 3


def test_check_a_run_against_the_paper_baseline(tmp_path):
    cells = [_record(0, "deephiding", "vanilla", 13.0, seed=2, dataset="cifar10", victim="resnet18"), _record(1, "em", "cutout", 30.0, dataset="cifar10", victim="resnet18")]
    run = _make_run(tmp_path / "run", cells)
    result = _cli("check", str(run), "--baseline", str(PAPER), "--json")
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["tolerance"] == 5.0 and report["within"] == 1
    assert [(m["cell"], m["baseline"], m["run"]) for m in report["moved"]] == [("cifar10 | em | cutout | resnet18 | seed 0", "10.00", "30.00")]
    assert len(report["missing_in_run"]) == len(bl.load(PAPER).cells) - 2
