"""The Markdown format."""

from __future__ import annotations

from ueb.report.model import ReportTable, _cells, _header


def _md(text: str) -> str:
    return text.replace("*", "\\*").replace("_", "\\_")


def to_markdown(table: ReportTable) -> str:
    head = _header(table)
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|",
    ]
    lines += [
        "| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, table)) + " |"
        for r in table.rows
    ]
    lines += ["", *(f"_{_md(n)}_" for n in table.notes)]
    return "\n".join(lines) + "\n"
