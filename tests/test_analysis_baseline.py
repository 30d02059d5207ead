"""Regression on numbers: `ueb baseline accept`, `ueb check`, and the paper's Table I/II baseline."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from core_helpers import REPO, run_cli
from typer.testing import CliRunner

from ueb.analysis import baseline as bl
from ueb.errors import ConfigError
from ueb.store import CellRecord, Store

PAPER = REPO / "benchmarks" / "baselines" / "paper-table1.json"

MANIFEST = {
    "config": {
        "profile": "smoke",
        "datasets": ["fashion-mnist"],
        "poisoners": ["clean", "em"],
        "countermeasures": ["vanilla", "cutout"],
        "victims": ["fastnet"],
    },
    "environment": {
        "ueb": "0.1.0",
        "git": "abc123",
        "python": "3.11",
        "torch": "2.14.1",
        "device": "cpu",
        "device_name": "cpu (x86_64, 2 threads)",
        "platform": "Linux",
        "plugins": {
            "ueb_baselines": {"distribution": "ueb", "version": "0.1.0", "ok": True, "error": None}
        },
    },
    "run_id": "smoke-0123456789",
    "last_finished": "2025-01-01T00:00:00",
}


def _record(
    i,
    poisoner,
    cm,
    acc,
    seed=0,
    dataset="fashion-mnist",
    victim="fastnet",
    fraction=1.0,
    version="1",
):
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


CELLS = [
    ("clean", "vanilla", 81.0),
    ("clean", "cutout", 79.5),
    ("em", "vanilla", 12.25),
    ("em", "cutout", 30.0),
]


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
    res = run_cli("check")
    assert res.returncode == 2
    assert "Missing argument" in res.stderr and "Traceback" not in res.stderr


def test_a_cell_that_now_fails_counts_as_moved(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    run = _make_run(tmp_path / "run", [*CELLS[:3], ("em", "cutout", None)])
    result = bl.compare(Store(run).records(), bl.load(base))
    assert [(m.entry.countermeasure, m.run_value) for m in result.moved] == [("cutout", None)]
    assert "cell failed (seed 0: RuntimeError: boom)" in result.moved[0].note


def test_missing_cells_are_listed_and_fail_only_with_strict(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    run = _make_run(tmp_path / "run", [*CELLS[:3], ("em", "mixup", 40.0)])
    result = bl.compare(Store(run).records(), bl.load(base))
    assert [e.countermeasure for e in result.missing_in_run] == ["cutout"]
    assert [e.countermeasure for e in result.missing_in_baseline] == ["mixup"]
    assert result.ok and result.within == 3 and (result.compared, result.baseline_cells) == (3, 4)
    full = _cli(
        "check", str(run), "--baseline", str(base)
    )  # the default asks for every baseline cell
    assert full.exit_code == 1 and "compared 3 of 4 baseline cells (75%)" in full.output
    assert "--min-coverage 0.75" in " ".join(full.output.split())
    loose = _cli("check", str(run), "--baseline", str(base), "--min-coverage", "0.75")
    assert loose.exit_code == 0 and "1 cells in the baseline but not in the run" in loose.output
    assert (
        _cli(
            "check", str(run), "--baseline", str(base), "--min-coverage", "0.75", "--strict"
        ).exit_code
        == 1
    )


def test_accept_round_trips_with_provenance(tmp_path):
    run = _make_run(
        tmp_path / "run",
        [
            *CELLS,
            _record(9, "em", "vanilla", 13.0, seed=1),
            _record(10, "em", "vanilla", 20.0, fraction=0.4),
        ],
    )
    path = _accept(run, tmp_path / "b", "smoke-cpu", "--tolerance", "0.5")
    loaded = bl.load(path)
    assert loaded.name == "smoke-cpu" and loaded.tolerance == 0.5
    assert {
        (e.poisoner, e.countermeasure, e.seed, e.fraction): e.accuracy for e in loaded.cells
    } == {
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
    assert p["run_dir"] == "run"  # the folder's name; a shared file holds no machine's path
    assert loaded.cells[0].versions == {"poisoner": "1", "countermeasure": "1", "victim": "1"}
    bl.save(loaded, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()  # stable on a round trip
    assert _cli("check", str(run), "--baseline", str(path)).exit_code == 0


def test_a_moved_cell_whose_plugin_version_changed_says_so(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    run = _make_run(
        tmp_path / "run", [*CELLS[:2], _record(2, "em", "vanilla", 25.0, version="2"), CELLS[3]]
    )
    (m,) = bl.compare(Store(run).records(), bl.load(base)).moved
    assert m.note == "version changed: poisoner v1->v2"


def _paper_like(tmp_path, accuracy=10.08, tolerance=5):
    baseline = tmp_path / "paper.json"
    baseline.write_text(
        json.dumps(
            {
                "name": "p",
                "tolerance": tolerance,
                "cells": [
                    {
                        "dataset": "cifar10",
                        "poisoner": "deephiding",
                        "countermeasure": "vanilla",
                        "victim": "resnet18",
                        "seed": None,
                        "accuracy": accuracy,
                    }
                ],
            }
        )
    )
    return baseline


def _dh_run(tmp_path, values, name="run"):
    cells = [
        _record(i, "deephiding", "vanilla", acc, seed=s, dataset="cifar10", victim="resnet18")
        for i, (s, acc) in enumerate(values)
    ]
    return Store(_make_run(tmp_path / name, cells)).records()


def test_seedless_entries_compare_the_seed_mean_within_the_seeds_spread(tmp_path):
    baseline = bl.load(_paper_like(tmp_path))
    # Seeds 12 and 16: the mean 14.0 is 3.92 from 10.08. Seed 1 alone is 5.92 away, beyond the
    # tolerance of 5; the seed mean is held to the 95% Welch half-width of the difference, the
    # seedless side borrowing the run's s (df 1): t(0.975, 1) sqrt(8) sqrt(1/2 + 1) = 44.0.
    result = bl.compare(_dh_run(tmp_path, [(0, 12.0), (1, 16.0)]), baseline)
    assert (result.within, result.moved, result.compared, result.baseline_cells) == (1, [], 1, 1)
    assert result.missing_in_run == [] and result.missing_in_baseline == []
    allowed = 12.706 * math.sqrt(8) * math.sqrt(1 / 2 + 1)
    assert bl.allowed_delta(5, 1, [12.0, 16.0], [10.08]) == pytest.approx(allowed, rel=1e-4)
    assert bl.allowed_delta(5, 2, [12.0, 16.0], [10.08]) == pytest.approx(2 * allowed, rel=1e-4)
    far = bl.compare(_dh_run(tmp_path, [(0, 60.0), (1, 64.0)], "far"), baseline)
    (m,) = far.moved
    assert (m.seeds, m.run_value, m.run_std, m.run_n, m.delta) == (
        [0, 1],
        62.0,
        pytest.approx(2.83, abs=0.01),
        2,
        pytest.approx(51.92),
    )
    assert m.allowed == pytest.approx(allowed, abs=0.01) and m.label().endswith("| seeds 0, 1")


def test_one_seed_on_each_side_is_held_to_the_tolerance_alone():
    assert bl.allowed_delta(1.0, 1.0, [50.0], [52.0]) == 1.0
    # One side with seeds lends its spread (and its degrees of freedom) to the other: both
    # measure the same seed noise. t(0.975, 2) * 2 * sqrt(1 + 1/3) = 9.94.
    assert bl.allowed_delta(1.0, 1.0, [50.0], [50.0, 52.0, 54.0]) == pytest.approx(
        4.303 * 2 * math.sqrt(1 / 1 + 1 / 3), rel=1e-4
    )
    assert (
        bl.allowed_delta(9.0, 1.0, [50.0, 51.0], [50.0, 51.0]) == 9.0
    )  # spread never narrows the tolerance


def test_a_multi_seed_baseline_compares_seed_means(tmp_path):
    seeds = [(s, 30.0 + 2 * s) for s in range(3)]  # 30, 32, 34: std 2
    base = _accept(
        _make_run(
            tmp_path / "a",
            [_record(i, "em", "vanilla", acc, seed=s) for i, (s, acc) in enumerate(seeds)],
        ),
        tmp_path / "b",
    )
    # Every seed moved by 2.5 points (more than the tolerance of 1), the mean too; the seeds'
    # spread allows the 95% Welch half-width t(0.975, 4) sqrt(4/3 + 4/3) = 4.53.
    shifted = _make_run(
        tmp_path / "run",
        [_record(i, "em", "vanilla", acc + 2.5, seed=s) for i, (s, acc) in enumerate(seeds)],
    )
    ok = _cli("check", str(shifted), "--baseline", str(base))
    assert ok.exit_code == 0, ok.output
    text = " ".join(ok.output.split())
    assert (
        "compared 1 of 1 baseline cells (100%)" in text
        and "1 x the 95% Welch half-width of the difference" in text
    )
    tight = _cli("check", str(shifted), "--baseline", str(base), "--spread-k", "0.5", "--json")
    report = json.loads(tight.output)
    assert (
        tight.exit_code == 1
        and report["moved"][0]["cell"] == "fashion-mnist | em | vanilla | fastnet | seeds 0, 1, 2"
    )
    assert report["moved"][0]["allowed"] == "2.27" and report["spread_k"] == 0.5


def test_an_empty_run_fails_with_one_line(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    empty = _make_run(tmp_path / "empty", [])
    res = run_cli("check", str(empty), "--baseline", str(base))
    assert res.returncode == 1, res.stdout + res.stderr
    assert (
        "FAILED: run" in res.stdout
        and "has no cells yet" in res.stdout
        and "Traceback" not in res.stderr
    )
    assert "compared 0 of 4 baseline cells (0%)" in res.stdout


def test_an_unrelated_run_fails_even_with_no_coverage_required(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    other = _make_run(
        tmp_path / "other",
        [_record(i, p, c, a, dataset="cifar10") for i, (p, c, a) in enumerate(CELLS)],
    )
    result = _cli("check", str(other), "--baseline", str(base), "--min-coverage", "0", "--json")
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["ok"] is False and report["compared"] == 0
    assert "shares no cell" in report["reason"] and len(report["missing_in_baseline"]) == 4


def test_configurations_of_one_cell_are_compared_apart(tmp_path):
    base = _accept(_make_run(tmp_path / "a", CELLS), tmp_path / "b")
    cells = [_record(i, p, c, a) for i, (p, c, a) in enumerate(CELLS)]
    for r in cells:
        r.config_digest = "aaaaaa" + r.countermeasure
    other = _record(9, "em", "vanilla", 40.0, seed=1)
    other.cell_id, other.config_digest = "other-config", "bbbbbbvanilla"
    other.poisoner_params = {"eps": 0.0627}
    result = bl.compare([*cells, other], bl.load(base))
    # Pooled, em x vanilla would be (12.25 + 40) / 2 = 26.1 with a spread wide enough to pass.
    (m,) = result.moved
    assert m.run_value == 40.0 and m.config == "bbbbbbvanilla" and "⟨cfg bbbbbb⟩" in m.label()
    assert result.within == 4 and result.compared == 4


def test_accept_refuses_a_run_that_mixes_configurations(tmp_path):
    from ueb.errors import UebError

    cells = [_record(i, p, c, a) for i, (p, c, a) in enumerate(CELLS)]
    twin = _record(9, "em", "vanilla", 40.0)
    twin.cell_id, twin.config_digest = "twin", "other"
    with pytest.raises(UebError, match="1 cells in more than one configuration"):
        bl.from_run("x", [*cells, twin], MANIFEST, tmp_path)


def test_bad_baselines_are_one_clear_error(tmp_path):
    from ueb.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline 'nope' not found"):
        bl.load("nope")
    broken = tmp_path / "b.json"
    broken.write_text('{"cells": [{"dataset": "x"}]}')
    with pytest.raises(
        ConfigError, match="cell 0 lacks poisoner, countermeasure, victim, accuracy"
    ):
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
    assert (
        paper.tolerance == 5.0
        and paper.provenance["profile"] == "paper"
        and "ResNet-18" in paper.provenance["victim"]
    )
    by_key = {(e.dataset, e.poisoner, e.countermeasure): e for e in paper.cells}
    assert by_key[("cifar10", "deephiding", "vanilla")].accuracy == 10.08  # DH(C), Table I
    assert by_key[("cifar100", "deephiding", "vanilla")].accuracy == 1.22
    assert by_key[("imagenet-subset", "deephiding", "vanilla")].accuracy == 2.42
    assert by_key[("cifar10", "deephiding", "orthogonal-projection")].accuracy == 10.00  # Table II
    assert by_key[("cifar10", "ops", "at-linf")].accuracy == 9.42
    assert len(paper.cells) == (10 + 10 + 7) * 14 + 10 * 4
    assert all(
        e.seed is None and e.victim == "resnet18" and e.fraction == 1.0 and e.source
        for e in paper.cells
    )
    registry = get_registry()
    for kind, attr in (
        ("poisoner", "poisoner"),
        ("countermeasure", "countermeasure"),
        ("dataset", "dataset"),
        ("victim", "victim"),
    ):
        names = {getattr(e, attr) for e in paper.cells}
        assert names <= set(registry.names(kind)), names - set(registry.names(kind))


def test_paper_baseline_summaries_agree_with_its_cells_except_the_papers_own_slips():
    """The printed Mean/Max of every row against the transcribed cells: a transcription check."""
    data = json.loads(PAPER.read_text())
    paper = bl.load(PAPER)
    slips = []
    for row in data["rows"]:
        table = "Table I" if row["source"] == "Table I" else "Table II"
        vals = [
            e.accuracy
            for e in paper.cells
            if (e.dataset, e.poisoner) == (row["dataset"], row["poisoner"])
            and e.source.startswith(table + ",")
        ]
        assert len(vals) == (14 if table == "Table I" else 4)
        if abs(statistics.fmean(vals) - row["mean"]) > 0.015:
            slips.append(("mean", row["dataset"], row["poisoner"]))
        if max(vals) != row["max"]:
            slips.append(("max", row["dataset"], row["poisoner"]))
    # Both are printed that way in the paper and listed in the baseline's notes.
    assert slips == [("mean", "cifar10", "deephiding-s"), ("max", "cifar100", "ops")]
    assert len(data["notes"]) == 3


def test_check_a_run_against_the_paper_baseline(tmp_path):
    cells = [
        _record(0, "deephiding", "vanilla", 13.0, seed=2, dataset="cifar10", victim="resnet18"),
        _record(1, "em", "cutout", 30.0, dataset="cifar10", victim="resnet18"),
    ]
    run = _make_run(tmp_path / "run", cells)
    result = _cli("check", str(run), "--baseline", str(PAPER), "--json")
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["tolerance"] == 5.0 and report["within"] == 1
    assert (report["compared"], report["baseline_cells"]) == (2, len(bl.load(PAPER).cells))
    assert [(m["cell"], m["baseline"], m["run"]) for m in report["moved"]] == [
        ("cifar10 | em | cutout | resnet18 | seed 0", "10.00", "30.00")
    ]
    assert len(report["missing_in_run"]) == len(bl.load(PAPER).cells) - 2


def test_a_non_numeric_baseline_value_is_one_line(tmp_path):
    path = tmp_path / "bad.json"
    cell = {"dataset": "d", "poisoner": "em", "countermeasure": "vanilla", "victim": "v"}
    path.write_text(json.dumps({"cells": [{**cell, "accuracy": "ninety"}]}))
    with pytest.raises(
        ConfigError, match=r"cell 0 \(em x vanilla\) has a value that is not a number"
    ):
        bl.load(path)


def test_a_check_against_other_plugin_versions_says_so_even_when_it_passes(tmp_path):
    seeds = [(s, 30.0 + s) for s in range(3)]
    base_run = _make_run(
        tmp_path / "a",
        [_record(i, "em", "vanilla", acc, seed=s) for i, (s, acc) in enumerate(seeds)],
    )
    base = _accept(base_run, tmp_path / "b")
    data = json.loads(Path(base).read_text())
    for c in data["cells"]:
        c["versions"] = {**c.get("versions", {}), "poisoner": "0"}
    Path(base).write_text(json.dumps(data))
    run = _make_run(
        tmp_path / "run",
        [_record(i, "em", "vanilla", acc, seed=s) for i, (s, acc) in enumerate(seeds)],
    )
    res = _cli("check", str(run), "--baseline", str(base))
    assert res.exit_code == 0, res.output
    assert "plugin versions differ from the baseline's" in " ".join(res.output.split())
