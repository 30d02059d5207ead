"""What the command line writes from a finished run: `ueb report` (formats, -o, --metric peak,
--pivot victim) and `ueb export`, on a run directory of known numbers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ueb.store import CellRecord, Store

# (poisoner, countermeasure, victim) -> final accuracy per seed; peak = final + 2
FINAL = {
    ("clean", "vanilla", "resnet18"): (90.0, 92.0),
    ("clean", "jpeg10", "resnet18"): (80.0, 82.0),
    ("em", "vanilla", "resnet18"): (10.0, 12.0),
    ("em", "jpeg10", "resnet18"): (70.0, 72.0),
    ("clean", "vanilla", "vgg19"): (88.0, 86.0),
    ("em", "vanilla", "vgg19"): (20.0, 24.0),
}
CONFIG = {
    "poisoners": ["clean", "em"],
    "countermeasures": ["vanilla", "jpeg10"],
    "victims": ["resnet18", "vgg19"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    store = Store(root)
    i = 0
    for (p, c, v), values in FINAL.items():
        for seed, acc in enumerate(values):
            store.put(
                CellRecord(
                    f"id{i}",
                    i,
                    "cifar10",
                    p,
                    c,
                    v,
                    seed,
                    status="ok",
                    final_acc=acc,
                    peak_acc=acc + 2,
                )
            )
            i += 1
    store.set_manifest(config=CONFIG, run_id="test-run")
    store.close()
    return root


def cli(*args: str) -> str:
    from ueb.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def csv_rows(text: str) -> dict[tuple[str, str, str], float]:
    return {
        (r["poisoner"], r["victim"], r["column"]): float(r["mean"])
        for r in csv.DictReader(io.StringIO(text))
        if r["mean"]
    }


@pytest.mark.parametrize(
    "fmt,suffix", [("latex", ".tex"), ("csv", ".csv"), ("json", ".json"), ("markdown", ".md")]
)
def test_report_writes_each_format_to_the_file_given(run_dir, tmp_path, fmt, suffix):
    by_flag, by_suffix = tmp_path / f"flag.{fmt}", tmp_path / f"table{suffix}"
    cli("report", str(run_dir), "--format", fmt, "-o", str(by_flag))
    cli("report", str(run_dir), "-o", str(by_suffix))  # the format follows the extension
    assert by_flag.read_text() == by_suffix.read_text()
    text = by_flag.read_text()
    if fmt == "csv":
        assert csv_rows(text)[("em", "resnet18", "jpeg10")] == pytest.approx(71.0)
    elif fmt == "json":
        em = next(
            r
            for r in json.loads(text)["rows"]
            if r["poisoner"] == "em" and r["victim"] == "resnet18"
        )
        assert em["cells"]["vanilla"]["mean"] == pytest.approx(11.0)
    elif fmt == "latex":
        assert "\\begin{tabular}" in text and "71.00" in text
    else:
        assert text.startswith("| Dataset") and "71.00" in text


def test_report_metric_peak_shows_the_peak_accuracies(run_dir, tmp_path):
    cli(
        "report",
        str(run_dir),
        "--format",
        "csv",
        "--metric",
        "peak",
        "-o",
        str(tmp_path / "peak.csv"),
    )
    cli("report", str(run_dir), "--format", "csv", "-o", str(tmp_path / "final.csv"))
    peak, final = (
        csv_rows((tmp_path / "peak.csv").read_text()),
        csv_rows((tmp_path / "final.csv").read_text()),
    )
    assert set(peak) == set(final) and ("em", "resnet18", "vanilla") in peak
    assert all(peak[k] == pytest.approx(final[k] + 2) for k in final if k[2] not in ("Mean", "Max"))
    assert peak[("em", "resnet18", "vanilla")] == pytest.approx(13.0)


def test_report_pivot_victim_gives_one_column_per_architecture(run_dir, tmp_path):
    out = tmp_path / "pivot.csv"
    cli("report", str(run_dir), "--pivot", "victim", "--format", "csv", "-o", str(out))
    rows = {
        (r["poisoner"], r["column"]): float(r["mean"])
        for r in csv.DictReader(io.StringIO(out.read_text()))
        if r["mean"]
    }
    assert rows[("em", "resnet18")] == pytest.approx(11.0) and rows[
        ("em", "vgg19")
    ] == pytest.approx(22.0)
    assert rows[("clean", "vgg19")] == pytest.approx(87.0)
    cli(
        "report",
        str(run_dir),
        "--pivot",
        "victim",
        "--countermeasure",
        "jpeg10",
        "--format",
        "csv",
        "-o",
        str(out),
    )
    rows = {
        (r["poisoner"], r["column"]): r["mean"]
        for r in csv.DictReader(io.StringIO(out.read_text()))
    }
    assert (
        float(rows[("em", "resnet18")]) == pytest.approx(71.0) and ("em", "vgg19") not in rows
    )  # not run


def test_export_writes_every_record_as_json_and_csv(run_dir, tmp_path):
    cli("export", str(run_dir), "--format", "json", "-o", str(tmp_path / "cells.json"))
    data = json.loads((tmp_path / "cells.json").read_text())
    cells = data["cells"] if isinstance(data, dict) else data
    assert len(cells) == 2 * len(FINAL)
    assert {
        (c["poisoner"], c["countermeasure"], c["victim"], c["seed"], c["final_acc"]) for c in cells
    } == {
        (p, c, v, seed, acc)
        for (p, c, v), values in FINAL.items()
        for seed, acc in enumerate(values)
    }
    cli("export", str(run_dir), "--format", "csv", "-o", str(tmp_path / "cells.csv"))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cells.csv").read_text())))
    assert len(rows) == 2 * len(FINAL)
    assert sorted(float(r["peak_acc"]) - float(r["final_acc"]) for r in rows) == [2.0] * len(rows)
