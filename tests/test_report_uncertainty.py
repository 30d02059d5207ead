"""Report tables carry their uncertainty: spread and seed count in every format, latch counts,
the within-noise marker, and configurations that are never pooled."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest
from rich.console import Console

from ueb.analysis.html_report import table_html
from ueb.report import (
    RENDERERS,
    build_table,
    pivot_by_victim,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    to_rich,
    within_noise,
)
from ueb.stats import t975
from ueb.store import CellRecord

CONFIG = {"countermeasures": ["vanilla", "jpeg10"], "poisoners": ["clean", "ops", "em"]}


def rec(
    poisoner,
    cm,
    seed,
    acc,
    *,
    digest="",
    probe=None,
    victim="resnet18",
    status="ok",
    params=None,
    **kw,
):
    return CellRecord(
        f"{poisoner}-{cm}-{seed}-{digest}-{victim}-{acc}",
        seed,
        "cifar10",
        poisoner,
        cm,
        victim,
        seed,
        status=status,
        final_acc=acc,
        peak_acc=acc,
        config_digest=digest,
        probe=probe or {},
        poisoner_params=params or {},
        error=None if status == "ok" else "RuntimeError: boom",
        **kw,
    )


def latch(flag: bool) -> dict:
    return {
        "target_rate": 0.95 if flag else 0.2,
        "train_acc": 99.0,
        "latched": flag,
        "threshold": 0.5,
        "pairs": 45,
    }


CLEAN = {"vanilla": [94.0, 94.4, 94.2], "jpeg10": [85.0, 85.6, 85.3]}
OPS = {"vanilla": [30.0, 34.0, 32.0], "jpeg10": [85.1, 85.7, 85.0]}  # jpeg10: within noise of clean


def records() -> list[CellRecord]:
    out = [rec("clean", c, s, a) for c, vals in CLEAN.items() for s, a in enumerate(vals)]
    out += [
        rec("ops", c, s, a, probe=latch(s != 1))
        for c, vals in OPS.items()
        for s, a in enumerate(vals)
    ]
    out += [rec("em", "vanilla", 0, 11.5)]  # a single seed
    return out


def table():
    return build_table(records(), "final", CONFIG)


def row(t, name):
    return next(r for r in t.rows if r.poisoner == name)


# --------------------------------------------------------------------------- statistics


def test_cells_are_mean_and_95_percent_t_interval_over_seeds_with_the_seed_count():
    ops = row(table(), "ops")
    v = ops.cells["vanilla"]
    assert (v.mean, v.std, v.n) == (
        pytest.approx(32.0),
        pytest.approx(statistics.stdev(OPS["vanilla"])),
        3,
    )
    assert v.ci95 == pytest.approx(4.303 * 2.0 / 3**0.5, rel=1e-4)  # 4.97
    assert v.text() == "32.00 ± 4.97 n=3 L2/3"


def test_a_single_seed_shows_n1_and_no_spread():
    em = row(table(), "em")
    assert em.cells["vanilla"].text() == "11.50 n=1"
    assert (
        em.mean.text().startswith("11.50*")
        and "±" not in em.mean.text()
        and "n=1" in em.mean.text()
    )
    cell = json.loads(to_json(table()))["rows"][2]["cells"]["vanilla"]
    assert (cell["mean"], cell["std"], cell["n"], cell["ci95"]) == (11.5, None, 1, None)


def test_t_quantiles_match_scipy():
    from scipy import stats  # a hard dependency: missing it must fail, not skip

    for df in (*range(1, 61), 100, 1000):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)


def test_mean_and_max_spread_is_the_seed_spread_of_the_value_shown():
    ops = row(table(), "ops")
    per_seed_means = [statistics.fmean(vals) for vals in zip(*OPS.values(), strict=True)]
    per_seed_max = [max(vals) for vals in zip(*OPS.values(), strict=True)]
    assert ops.mean.mean == pytest.approx(statistics.fmean(per_seed_means))
    assert ops.mean.std == pytest.approx(statistics.stdev(per_seed_means))
    assert ops.max.std == pytest.approx(statistics.stdev(per_seed_max)) and ops.max.n == 3
    # The Mean equals the mean of the cells' means when every seed has every column.
    assert ops.mean.mean == pytest.approx(statistics.fmean(v.mean for v in ops.cells.values()))


def test_a_seed_missing_a_column_does_not_enter_the_mean_over_fewer_columns():
    """Seed 2 has only vanilla: averaging its vanilla alone with seeds 0/1's two-column means
    would mix different quantities and inflate the spread."""
    recs = [
        r
        for r in records()
        if not (r.poisoner == "ops" and r.countermeasure == "jpeg10" and r.seed == 2)
    ]
    ops = row(build_table(recs, "final", CONFIG), "ops")
    assert ops.mean.n == 2 and not ops.mean.incomplete
    assert ops.mean.mean == pytest.approx(statistics.fmean([(30.0 + 85.1) / 2, (34.0 + 85.7) / 2]))
    assert ops.cells["vanilla"].n == 3 and ops.cells["jpeg10"].n == 2


def test_failed_seeds_are_counted_beside_the_mean():
    recs = [
        *records(),
        rec("em", "vanilla", 1, None, status="error"),
        rec("em", "jpeg10", 0, None, status="error"),
    ]
    em = row(build_table(recs, "final", CONFIG), "em")
    assert em.cells["vanilla"].text() == "11.50 n=1 err=1"
    assert em.cells["jpeg10"].text() == "err"


# --------------------------------------------------------------------------- within noise


def test_values_within_noise_of_the_clean_row_are_marked():
    t = table()
    ops = row(t, "ops")
    assert ops.cells["jpeg10"].near_clean and ops.cells["jpeg10"].main().startswith("≈85.27")
    assert not ops.cells["vanilla"].near_clean
    assert not row(t, "em").cells["vanilla"].near_clean  # one seed: no judgement
    assert not any(v.near_clean for v in row(t, "clean").cells.values())


def test_the_within_noise_rule_is_the_95_percent_welch_interval_of_the_difference():
    from ueb.report import Value

    # equal spreads, n = 4 each: df = 6, t = 2.447, se = sqrt(1/4 + 1/4) = 0.707: 1.730
    a, b = Value(10.0, 1.0, 4), Value(11.7, 1.0, 4)
    assert within_noise(a, b)
    assert not within_noise(Value(10.0, 1.0, 4), Value(11.75, 1.0, 4))
    assert not within_noise(Value(10.0, 0.0, 1), Value(10.0, 0.0, 1))
    # unequal spreads: the Welch-Satterthwaite df (here 3.2), not n_a + n_b - 2
    from scipy import stats as scipy_stats  # a hard dependency

    from ueb.stats import difference_half_width

    va, vb = 4.0 / 4, 0.25 / 4
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
    want = scipy_stats.t.ppf(0.975, df) * (va + vb) ** 0.5
    assert difference_half_width(2.0, 4, 0.5, 4) == pytest.approx(want, rel=2e-3)


def test_a_cell_wider_than_the_resolution_is_marked_unresolved():
    from ueb.report import Value

    wide = Value(34.7, 3.2, 3)  # 95% half-width 7.95 > 5 points
    assert wide.main() == "34.70 ± 7.95?" and not wide.resolved
    assert Value(87.0, 0.4, 3).main() == "87.00 ± 0.99" and Value(87.0, 0.4, 3).resolved


# --------------------------------------------------------------------------- every format


def test_every_format_shows_spread_seed_count_latches_and_the_rules():
    t = table()
    md, tex, html = to_markdown(t), to_latex(t), table_html(t)
    console = Console(width=200, record=True, color_system=None)
    console.print(to_rich(t, 200))
    terminal = console.export_text()
    for text in (md, terminal, html):
        assert "32.00 ± 4.97" in text and "n=3" in text and "L2/3" in text and "≈85.27" in text
        assert (
            "95% Student-t interval" in text
            and "Welch" in text
            and "latched in k of the m probed seeds" in text
        )
    assert (
        "32.00 $\\pm$ 4.97 n=3 L2/3" in tex
        and "$\\approx$85.27" in tex
        and "95\\% Student-t interval" in tex
    )
    data = json.loads(to_json(t))
    cell = data["rows"][1]["cells"]["vanilla"]
    assert (cell["mean"], cell["n"], cell["latched"], cell["probed"]) == (
        pytest.approx(32.0),
        3,
        2,
        3,
    )
    assert cell["std"] == pytest.approx(2.0) and cell["ci95"] == pytest.approx(4.97, abs=0.01)
    assert data["rows"][1]["mean"]["n"] == 3 and data["rows"][1]["mean"]["std"] > 0
    assert data["rows"][0]["cells"]["vanilla"]["latched"] is None  # clean: not probed
    assert "sample standard deviation" in data["spread"]


def test_csv_is_long_format_that_pivots_back_to_table_one():
    t = table()
    lines = list(csv.DictReader(io.StringIO(to_csv(t))))
    assert len(lines) == len(t.rows) * len(t.value_columns)
    pivot = {(r["poisoner"], r["column"]): r for r in lines}
    ops = pivot[("ops", "vanilla")]
    assert (
        float(ops["mean"]),
        float(ops["std"]),
        int(ops["n"]),
        ops["latched"],
        ops["probed"],
    ) == (32.0, 2.0, 3, "2", "3")
    assert float(ops["ci95"]) == pytest.approx(4.97, abs=0.01)
    assert (
        pivot[("ops", "jpeg10")]["near_clean"] == "1" and pivot[("ops", "Mean")]["summary"] == "1"
    )
    assert pivot[("em", "vanilla")]["std"] == "" and pivot[("em", "vanilla")]["n"] == "1"


# --------------------------------------------------------------------------- configurations


def two_configs():
    """Two runs of em into one directory: eps 8/255 (seeds 0-1) and eps 16/255 (seeds 0-1)."""
    out = [rec("clean", "vanilla", s, 94.0 + s / 10, digest="c") for s in range(2)]
    for eps, digest, base in ((0.0314, "aaa111", 10.0), (0.0627, "bbb222", 40.0)):
        for cm in ("vanilla", "jpeg10"):
            out += [
                rec("em", cm, s, base + s, digest=digest + cm, params={"eps": eps})
                for s in range(2)
            ]
    return out


def test_records_of_different_configurations_are_never_pooled():
    t = build_table(two_configs(), "final", CONFIG)
    ems = [r for r in t.rows if r.name == "em"]
    assert (
        len(ems) == 2
        and all("⟨cfg " in r.poisoner for r in ems)
        and ems[0].variant != ems[1].variant
    )
    assert sorted(r.cells["vanilla"].mean for r in ems) == [10.5, 40.5]  # not 25.5
    assert all(r.cells["vanilla"].n == 2 and r.cells["jpeg10"].n == 2 for r in ems)
    note = next(n for n in t.notes if "never pooled" in n)
    assert "poisoner_params.eps: 0.0314" in note and "0.0627" in note and "aaa111vanil" in note
    for render in RENDERERS.values():
        text = render(t)
        assert text.count(ems[0].variant) >= 2 and ems[1].variant in text
    assert json.loads(to_json(t))["configurations"][0]["differs"].startswith("poisoner_params.eps")


def test_an_unexplained_configuration_difference_splits_only_the_conflicting_cells():
    recs = [rec("em", "vanilla", s, 10.0 + s, digest="d1") for s in range(2)]
    recs += [rec("em", "jpeg10", s, 50.0 + s, digest="d2") for s in range(2)]
    recs += [
        rec("em", "jpeg10", s, 70.0 + s, digest="d3") for s in range(2)
    ]  # same settings, other digest
    t = build_table(recs, "final", CONFIG)
    labels = [r.poisoner for r in t.rows]
    assert labels == ["em", "em ⟨cfg d2⟩", "em ⟨cfg d3⟩"]
    assert t.rows[0].cells["jpeg10"].mean is None and t.rows[1].cells["jpeg10"].mean == 50.5
    assert "jpeg10: no recorded parameter (training or data settings?)" in " ".join(t.notes)


def test_old_records_without_a_digest_are_pooled_as_before():
    t = build_table(records(), "final", CONFIG)
    assert [r.poisoner for r in t.rows] == ["clean", "ops", "em"] and not t.configs


def test_the_victim_pivot_carries_spread_and_splits_configurations():
    recs = records() + [rec("ops", "vanilla", s, 50.0 + s, victim="vgg19") for s in range(3)]
    t = pivot_by_victim(recs, "vanilla", "final", {"victims": ["resnet18", "vgg19"]})
    ops = row(t, "ops")
    assert ops.cells["vgg19"].text() == "51.00 ± 2.48 n=3" and ops.cells["resnet18"].n == 3
    assert "Countermeasure" in to_markdown(t)


def test_a_clean_row_trained_differently_is_no_reference_for_the_within_noise_mark():
    recs = [
        CellRecord(
            r.cell_id,
            r.ordinal,
            r.dataset,
            r.poisoner,
            r.countermeasure,
            r.victim,
            r.seed,
            status="ok",
            final_acc=r.final_acc,
            victim_params={"width": 32 if r.poisoner == "clean" else 64},
        )  # fmt: skip
        for r in records()
    ]
    ops = row(build_table(recs, "final", CONFIG), "ops")
    assert not ops.cells["jpeg10"].near_clean and row(table(), "ops").cells["jpeg10"].near_clean
