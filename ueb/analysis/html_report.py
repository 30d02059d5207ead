"""One self-contained HTML page for a run: the Table I layout, the heatmaps, the image grids (and
t-SNE / Grad-CAM where models were saved), and the manifest. CSS is inline and every image is
a base64 PNG, so the file can be mailed or attached as is; it loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ueb.analysis.figures import FigureOut, FigureSet
from ueb.analysis.rundata import RunData
from ueb.report import SUMMARIES, ReportTable, Value, title

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1500px;
       padding: 0 1.5em; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.sub { color: #666; margin-top: 0; }
table.results { border-collapse: collapse; font-size: 0.82em; font-variant-numeric: tabular-nums; margin: 1em 0; }
table.results th, table.results td { border: 1px solid #d0d0d0; padding: 0.25em 0.5em; }
table.results th { background: #f2f2f2; position: sticky; top: 0; }
table.results td.num { text-align: right; }
table.results td.best { font-weight: bold; } table.results td.second { text-decoration: underline; }
table.results tr.reference td { color: #777; background: #fafafa; }
table.results td.summary { background: #f7f7fb; }
table.results tr.newdataset td { border-top: 2px solid #888; }
figure { display: inline-block; margin: 0.6em 1em 0.6em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #e2e2e2; }
figcaption { font-size: 0.8em; color: #444; max-width: 900px; }
dl.manifest { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; font-size: 0.9em; }
dl.manifest dt { font-weight: 600; } dl.manifest dd { margin: 0; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
div.tablewrap { max-width: 100%; overflow-x: auto; }
details > summary { cursor: pointer; font-weight: 600; margin: 1em 0 0.4em; }
ul.notes { font-size: 0.85em; color: #8a5a00; }
ul.tablenotes { font-size: 0.8em; color: #555; }
table.results span.n { font-size: 0.8em; color: #777; white-space: nowrap; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _value_html(v: Value) -> str:
    """The number, then the seed count and markers in smaller type; the 95% CI as a tooltip."""
    detail = v.detail()
    tip = f' title="95% t-interval: ± {v.ci95:.2f}"' if v.ci95 is not None else ""
    small = f' <span class="n">{_e(detail)}</span>' if detail else ""
    return f"<span{tip}>{_e(v.main())}</span>{small}"


def table_html(table: ReportTable) -> str:
    """The Table I layout: a row per (dataset, victim, poisoner), a column per countermeasure.

    In each countermeasure column (within a dataset and victim) the lowest accuracy among the
    poisoned rows is bold and the second lowest underlined, the paper's marking of the best
    protections. Every value carries its spread and seed count (see the notes under the table).
    """
    head = ["Dataset", table.row_axis, "Poisoner", *table.value_columns]
    marks: dict[tuple[int, str], str] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(table.rows):
        if not r.is_clean:
            groups.setdefault((r.dataset, r.victim), []).append(i)
    for members in groups.values():
        for col in table.value_columns:
            vals = []
            for i in members:
                v = table.rows[i].value(col)
                if v.mean is not None:
                    vals.append((round(v.mean, 2), i))
            ranked = sorted(set(m for m, _ in vals))
            for m, i in vals:
                if len(vals) > 1 and m == ranked[0]:
                    marks[(i, col)] = "best"
                elif len(ranked) > 2 and m == ranked[1]:
                    marks[(i, col)] = "second"
    lines = [
        '<table class="results">',
        "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    last = None
    for i, r in enumerate(table.rows):
        classes = []
        if r.is_clean:
            classes.append("reference")
        if last is not None and r.dataset != last:
            classes.append("newdataset")
        last = r.dataset
        cells = [
            f"<td>{_e(r.dataset)}</td>",
            f"<td>{_e(r.victim)}</td>",
            f"<td>{_e(title(r))}</td>",
        ]
        for col in table.value_columns:
            cls = " ".join(
                c
                for c in ("num", marks.get((i, col), ""), "summary" if col in SUMMARIES else "")
                if c
            )
            cells.append(f'<td class="{cls}">{_value_html(r.value(col))}</td>')
        lines.append(f'<tr class="{" ".join(classes)}">' + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    lines += ['<ul class="tablenotes">', *(f"<li>{_e(n)}</li>" for n in table.notes)]
    lines += [
        "<li>bold / underline: lowest / second-lowest mean accuracy of a poisoned row in that column</li>",
        "</ul>",
    ]
    return "\n".join(lines)


def figure_html(fig: FigureOut) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure id="{_e(fig.name)}"><img alt="{_e(fig.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(fig.title)}</figcaption></figure>"
    )


def manifest_html(manifest: dict[str, Any]) -> str:
    env = manifest.get("environment") or {}
    config = manifest.get("config") or {}
    facts = [
        ("run", manifest.get("run_id")),
        ("profile", config.get("profile")),
        ("finished", manifest.get("last_finished")),
        ("ueb", env.get("ueb")),
        ("git commit", env.get("git")),
        ("python", env.get("python")),
        ("torch", env.get("torch")),
        ("device", f"{env.get('device', '')} ({env.get('device_name', '')})"),
        ("platform", env.get("platform")),
        ("cache", manifest.get("cache_root")),
    ]
    plugins = env.get("plugins") or {}
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v is not None)
    plugin_rows = "".join(
        f"<tr><td>{_e(n)}</td><td>{_e(p.get('distribution', ''))}</td><td>{_e(p.get('version', ''))}</td>"
        f"<td>{'ok' if p.get('ok', True) else _e('failed: ' + str(p.get('error')))}</td></tr>"
        for n, p in sorted(plugins.items())
    )
    parts = [f'<dl class="manifest">{rows}</dl>']
    if plugin_rows:
        parts.append(
            '<h3>Plugins</h3><table class="results"><thead><tr><th>plugin</th><th>distribution</th><th>version</th>'
            f"<th>status</th></tr></thead><tbody>{plugin_rows}</tbody></table>"
        )
    parts.append(  # folded: a full configuration is thousands of lines
        "<details><summary>Configuration (the resolved plan, JSON)</summary>"
        f"<pre>{_e(json.dumps(config, indent=2, default=str))}</pre></details>"
    )
    return "\n".join(parts)


SECTIONS = (
    ("heatmap", "Heatmaps", "Test accuracy of each cell (poisoner x countermeasure) as colour."),
    (
        "seeds",
        "Seeds",
        "Every seed's accuracy as a dot, a bar at the mean; a triangle marks a seed whose victim latched onto the class-wise shortcut.",
    ),
    (
        "perturbations",
        "Unlearnable examples",
        "Clean images, unlearnable examples and |perturbation| normalised to [0, 1] per image (the paper's Fig. 5).",
    ),
    (
        "tsne",
        "t-SNE of features",
        "Features of a victim trained on the poison, on clean images and on the perturbations alone (the paper's Fig. 4).",
    ),
    (
        "gradcam",
        "Grad-CAM",
        "Where victims trained on the poison look when they classify unlearnable examples (the paper's Fig. 3).",
    ),
)


def detection_html(run_dir: Path) -> str:
    """The detection table of `detection.json` (written by `ueb run --detectors`), or ''."""
    path = Path(run_dir) / "detection.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())

    def interval(v: dict[str, Any], mark: str = "") -> str:
        if v.get("mean") is None:
            return "-"
        half = f" ± {v['half']:.2f}" if v.get("half") is not None else ""
        return f'{v["mean"]:.2f}{half}{mark} <span class="n">n={_e(v["n"])}</span>'

    head = ["Dataset", "Poisoner", "Fraction", "Detector", "AUROC", "Accuracy"]
    rows = []
    for s in data.get("summary", []):
        mark = "*" if "set-verdict" in str(s.get("auroc_kind", "")) else ""
        rows.append(
            "<tr>"
            + "".join(f"<td>{_e(s[k])}</td>" for k in ("dataset", "poisoner"))
            + f'<td class="num">{float(s["fraction"]):.0%}</td><td>{_e(s["detector"])}</td>'
            + f'<td class="num">{interval(s["auroc"], mark)}</td>'
            + f'<td class="num">{interval(s["accuracy"])}</td></tr>'
        )
    notes = "".join(f"<li>{_e(n)}</li>" for n in data.get("notes", []))
    return (
        '<h2 id="detection">Detection</h2><table class="results"><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + f'</tr></thead><tbody>{"".join(rows)}</tbody></table><ul class="tablenotes">{notes}</ul>'
    )


def render(run: RunData, table: ReportTable, figures: FigureSet) -> str:
    config = run.config
    title = f"ueb report: {run.manifest.get('run_id') or run.run_dir.name}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">profile {_e(config.get("profile", "?"))} · {len(run.records)} cells '
        f"({sum(r.status == 'ok' for r in run.records)} ok, {sum(r.status == 'error' for r in run.records)} failed) · "
        f"datasets {_e(', '.join(config.get('datasets', [])))} · victims {_e(', '.join(config.get('victims', [])))}</p>",
        "<h2>Results (Table I layout)</h2>",
        f'<div class="tablewrap">{table_html(table)}</div>',  # scrolls inside its box, not the page
        detection_html(run.run_dir),
    ]
    for kind, heading, blurb in SECTIONS:
        figs = figures.of(kind)
        if figs:
            body += [
                f'<h2 id="{kind}">{_e(heading)}</h2>',
                f'<p class="sub">{_e(blurb)}</p>',
                *(figure_html(f) for f in figs),
            ]
    if figures.notes:
        body += [
            "<h2>Figures not drawn</h2>",
            '<ul class="notes">',
            *(f"<li>{_e(n)}</li>" for n in figures.notes),
            "</ul>",
        ]
    failed = [r for r in run.records if r.status == "error"]
    if failed:
        body += ["<h2>Failed cells</h2>", '<ul class="notes">']
        body += [
            f"<li>{_e(f'{r.dataset} / {r.poisoner} / {r.countermeasure} / {r.victim} / seed {r.seed}: {r.error}')}</li>"
            for r in failed
        ]
        body.append("</ul>")
    body += ["<h2>Manifest</h2>", manifest_html(run.manifest)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
