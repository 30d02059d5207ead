"""A poisoner's caveat (semantic images not from the paper's generator) marks its row in every
format."""

from __future__ import annotations

import json

from rich.console import Console

from ueb.analysis.html_report import table_html
from ueb.report import build_table, to_csv, to_json, to_latex, to_markdown, to_rich
from ueb.store import CellRecord

CAVEAT = "semantic images from the offline approximation bank, not SIG's diffusion backend"


def _records():
    recs = []
    for i, (p, facts) in enumerate([("clean", {}), ("deephiding", {"caveat": CAVEAT}), ("em", {})]):
        for s in range(2):
            recs.append(
                CellRecord(
                    cell_id=f"{p}-{s}",
                    ordinal=i * 2 + s,
                    dataset="cifar10",
                    poisoner=p,
                    countermeasure="vanilla",
                    victim="resnet18",
                    seed=s,
                    status="ok",
                    final_acc=50.0 + s,
                    peak_acc=60.0,
                    poison_facts=facts,
                    config_digest=p,
                )  # fmt: skip
            )
    return recs


def test_a_caveat_marks_its_row_and_is_explained_in_every_format():
    table = build_table(_records())
    console = Console(width=200, record=True, color_system=None)
    console.print(to_rich(table, 200))
    import html

    page = html.unescape(table_html(table))
    for text in (to_markdown(table), to_latex(table), page, console.export_text()):
        assert "deephiding †" in text and CAVEAT.replace("'", "") in text.replace("'", "")
        assert "em †" not in text and "clean †" not in text
    assert "deephiding †" in to_csv(table)
    rows = {r["plugin"]: r for r in json.loads(to_json(table))["rows"]}
    assert rows["deephiding"]["caveats"] == [CAVEAT] and rows["em"]["caveats"] == []
