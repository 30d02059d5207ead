"""The terminal table reads at any width: no number is ever cut to '…' and no line overflows."""

from __future__ import annotations

import random
import re

import pytest
from rich.console import Console

from ueb.registry import get_registry
from ueb.report import build_table, to_rich
from ueb.store import CellRecord

PROBE = {"target_rate": 0.92, "train_acc": 99.5, "threshold": 0.5, "pairs": 45}


def main_job(
    poisoners: tuple[str, ...] = ("clean", "deephiding"), seeds: int = 3
) -> tuple[list[CellRecord], list[str]]:
    """The main job's matrix: every countermeasure of 'all' on fashion-mnist / fastnet."""
    countermeasures = get_registry().select("countermeasure", ["all"])
    rng = random.Random(7)
    records = []
    for p in poisoners:
        for c in countermeasures:
            centre = rng.uniform(80, 95) if p == "clean" else rng.uniform(8, 90)
            for s in range(seeds):
                probe = {} if p == "clean" else {**PROBE, "latched": s < 2}
                acc = round(centre + rng.gauss(0, 1.5), 2)
                records.append(
                    CellRecord(
                        f"{p}-{c}-{s}",
                        len(records),
                        "fashion-mnist",
                        p,
                        c,
                        "fastnet",
                        s,
                        status="ok",
                        final_acc=acc,
                        peak_acc=acc,
                        config_digest=f"{p}{c}",
                        probe=probe,
                    )
                )
    return records, countermeasures


def render(table, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(to_rich(table, width))
    return console.export_text()


def mean_strings(table) -> list[str]:
    return [
        re.sub(r"^≈", "", r.value(c).main())
        for r in table.rows
        for c in table.value_columns
        if r.value(c).mean is not None
    ]


def assert_readable(text: str, table, width: int) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    missing = [m for m in mean_strings(table) if m not in text]
    assert not missing, missing


def test_the_main_job_has_twenty_one_countermeasures():
    assert len(main_job()[1]) == 21


@pytest.mark.parametrize("width", [80, 120])
def test_main_job_table_reads_at_terminal_width(width):
    records, countermeasures = main_job()
    table = build_table(
        records, "final", {"countermeasures": countermeasures, "poisoners": ["clean", "deephiding"]}
    )
    assert all(v.n == 3 and v.std for r in table.rows for v in (*r.cells.values(), r.mean, r.max))
    text = render(table, width)
    assert_readable(text, table, width)
    for name in countermeasures:  # row labels in full too
        assert name in text
    assert "L2/3" in text and "n=3" in text and " ± " in text
    # Table I is 21 countermeasures wide: at these widths it is shown transposed, in one piece.
    assert "countermeasures as rows" in " ".join(text.split()) and "part 1 of" not in text


@pytest.mark.parametrize("width", [60, 80, 100])
def test_many_poisoners_are_split_into_panels_that_repeat_the_row_labels(width):
    poisoners = ("clean", "deephiding", "em", "rem", "tap", "ops", "lsp", "ar")
    records, countermeasures = main_job(poisoners)
    table = build_table(
        records, "final", {"countermeasures": countermeasures, "poisoners": list(poisoners)}
    )
    text = render(table, width)
    assert_readable(text, table, width)
    parts = re.findall(r"part (\d+) of (\d+)", " ".join(text.split()))
    assert len(parts) >= 2 and parts[-1][0] == parts[-1][1]
    labels = (
        ("vanilla", "simclr") if "countermeasures as rows" in " ".join(text.split()) else poisoners
    )
    for label in labels:
        assert text.count(label) >= len(parts)


def test_a_table_that_fits_keeps_the_table_one_layout():
    records, _ = main_job()
    cms = ["vanilla", "jpeg10", "grayscale"]
    table = build_table(
        [r for r in records if r.countermeasure in cms], "final", {"countermeasures": cms}
    )
    text = render(table, 200)
    assert_readable(text, table, 200)
    header = next(line for line in text.splitlines() if "Poisoner" in line)
    assert (
        header.index("vanilla")
        < header.index("jpeg10")
        < header.index("Mean")
        < header.index("Max")
    )
    assert "as rows" not in text and "part 1" not in text
    assert (
        next(line for line in text.splitlines() if "deephiding" in line).count("n=3") == 5
    )  # one line per row


def test_several_datasets_and_victims_are_labelled_in_every_layout():
    records, countermeasures = main_job()
    more = [
        CellRecord(
            r.cell_id + "x",
            r.ordinal,
            "cifar10",
            r.poisoner,
            r.countermeasure,
            "resnet18",
            r.seed,
            status="ok",
            final_acc=r.final_acc,
        )
        for r in records
    ]
    table = build_table(records + more, "final", {"countermeasures": countermeasures})
    for width in (80, 160):
        text = render(table, width)
        assert_readable(text, table, width)
        assert "cifar10" in text and "resnet18" in text and "fashion-mnist" in text


def test_without_a_width_the_layout_is_table_one():
    records, countermeasures = main_job()
    table = build_table(records, "final", {"countermeasures": countermeasures})
    console = Console(width=1000, record=True, color_system=None)
    console.print(to_rich(table))
    header = next(line for line in console.export_text().splitlines() if "Poisoner" in line)
    assert all(c in header for c in countermeasures)
