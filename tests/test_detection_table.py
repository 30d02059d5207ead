"""The detection table: its metrics (AUROC, t-interval), the poisoned mask of a partial poison,
and `ueb run --detectors` end to end (terminal, JSON, HTML)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ueb.detection import (
    DetectionRow,
    Interval,
    auroc,
    chance_tolerance,
    poisoned_mask,
    summarise,
    to_csv,
    to_markdown,
)
from ueb.testing import make_imageset
from ueb.worker import mix_poison


def _cli(*args: str):
    from ueb.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_auroc_of_exact_orderings_and_ties():
    mask = np.array([False, False, True, True])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), mask) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), mask) == 0.0
    assert auroc(np.zeros(4), mask) == 0.5
    assert auroc(np.array([0.1, 0.5, 0.5, 0.9]), mask) == pytest.approx(0.875)
    assert auroc(np.arange(4.0), np.ones(4, dtype=bool)) is None
    assert auroc(np.arange(4.0), np.zeros(4, dtype=bool)) is None


def test_chance_auroc_stays_within_its_tolerance():
    rng = np.random.default_rng(0)
    mask = np.arange(200) < 100
    tol = chance_tolerance(100, 100)
    assert tol == pytest.approx(3 * math.sqrt(201 / (12 * 100 * 100)))
    outside = sum(abs(auroc(rng.random(200), mask) - 0.5) > tol for _ in range(200))
    assert outside <= 2  # 3 sigma: about 0.3% of draws


def test_interval_is_the_95_percent_t_interval():
    got = Interval.of([0.5, 0.7, 0.9])
    assert got.mean == pytest.approx(0.7) and got.n == 3
    assert got.half == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-5)
    one = Interval.of([0.8, None])
    assert (one.mean, one.half, one.n) == (0.8, None, 1)
    assert one.text() == "0.80 (n=1)" and Interval.of([]).text() == "-"


@pytest.mark.parametrize("fraction", [0.2, 0.5, 1.0])
def test_poisoned_mask_is_the_subset_mix_poison_poisons(fraction):
    clean = make_imageset(per_class=10, num_classes=4)
    poisoned = clean.with_images((clean.images.long() + 1).clamp(max=255).to(torch.uint8))
    for seed in (0, 7):
        mixed = mix_poison(clean, poisoned, fraction, seed)
        took = (mixed.images != clean.images).flatten(1).any(1).numpy()
        mask = poisoned_mask(len(clean), fraction, seed)
        assert mask.sum() == round(fraction * len(clean))
        assert np.array_equal(took, mask)


def _row(seed: int, fraction: float, auc: float | None, kind: str, acc: float) -> DetectionRow:
    return DetectionRow(
        "d", "p", fraction, seed, "det", 10, 5, auc, kind, acc, 0.8, 0.7, True, False, 0.1
    )


def test_summary_pools_seeds_and_marks_set_level_auroc():
    rows = [_row(s, 1.0, 1.0, "set-verdict", 1.0) for s in (0, 1)]
    rows += [_row(0, 0.5, 0.9, "per-image", 1.0), _row(1, 0.5, 0.7, "per-image", 0.5)]
    full, half = summarise(rows)
    assert (full.auroc.mean, full.auroc.half, full.auroc_kind) == (1.0, 0.0, "set-verdict")
    assert half.auroc.mean == pytest.approx(0.8) and half.accuracy.mean == pytest.approx(0.75)
    text = to_markdown([full, half])
    assert "| d | p | 100% | det | 1.00 ± 0.00 (n=2)* |" in text
    assert "| d | p | 50% | det | 0.80 ± 1.27 (n=2) |" in text
    assert to_csv([half]).splitlines()[1].startswith("d,p,0.5,det,0.8")


def test_ueb_run_with_detectors_prints_writes_and_reports_the_table(tmp_path):
    run = tmp_path / "run"
    result = _cli(
        "run", "-p", "deephiding,em-class", "-c", "vanilla", "--detectors", "all",
        "--profile", "smoke", "--run-dir", str(run), "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "| simple-net |" in line]
    assert [line.split("|")[2].strip() for line in lines] == ["deephiding", "em-class"]
    assert "AUROC" in result.output
    data = json.loads((run / "detection.json").read_text())
    summary = {(s["poisoner"], s["detector"]): s for s in data["summary"]}
    assert set(summary) == {("deephiding", "simple-net"), ("em-class", "simple-net")}
    for s in summary.values():  # fully poisoned: AUROC is the set-level verdict accuracy
        assert s["auroc_kind"] == "set-verdict" and s["auroc"]["n"] == 1
        assert s["auroc"]["mean"] in (0.0, 0.5, 1.0) and s["auroc"]["mean"] == s["accuracy"]["mean"]
    rows = data["rows"]
    assert all(r["images"] == 200 and r["poisoned_images"] == 200 for r in rows)
    assert len({r["clean_verdict"] for r in rows}) == 1  # one clean set, judged once per seed
    assert (run / "detection.csv").read_text().count("simple-net") == 2
    html = tmp_path / "report.html"
    assert _cli("report", str(run), "--format", "html", "-o", str(html)).exit_code == 0
    page = html.read_text()
    assert '<h2 id="detection">Detection</h2>' in page
    assert page.count("<td>simple-net</td>") == 2
    exported = tmp_path / "report.json"
    assert _cli("report", str(run), "--format", "json", "-o", str(exported)).exit_code == 0
    assert json.loads(exported.read_text())["detection"]["summary"] == data["summary"]


def test_a_misspelled_detector_stops_the_run_before_any_work(tmp_path):
    result = CliRunner().invoke(
        __import__("ueb.cli", fromlist=["app"]).app,
        ["run", "-p", "em-class", "-c", "vanilla", "--detectors", "simple-nett",
         "--profile", "smoke", "--run-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "simple-net" in str(result.exception) or "simple-net" in result.output
    assert not (tmp_path / "run").exists()
