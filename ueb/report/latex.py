"""The LaTeX format (a booktabs tabular)."""

from __future__ import annotations

from ueb.report.model import NEAR, ReportTable, _cells, _header

_TEX = {
    "\\": "\\textbackslash{}", "{": "\\{", "}": "\\}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "$": "\\$",
    "^": "\\^{}", "~": "\\~{}", "|": "$|$", "<": "$<$", ">": "$>$", "±": "$\\pm$", NEAR: "$\\approx$", "⟨": "$\\langle$", "⟩": "$\\rangle$",
}  # fmt: skip


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(table: ReportTable) -> str:
    head = _header(table)
    spec = "lll" + "r" * (len(head) - 3)
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_tex(c) for c in _cells(r, table)) + " \\\\" for r in table.rows]
    lines.append("\\bottomrule")
    lines += [
        f"\\multicolumn{{{len(head)}}}{{p{{0.95\\linewidth}}}}{{\\footnotesize {_tex(n)}}} \\\\"
        for n in table.notes
    ]
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"
