"""The analysis commands of the `ueb` CLI: plot, html, check, baseline accept.

Attached by `ueb.cli_analysis.add_commands` through `register(app)`. Importing this module
imports neither torch nor matplotlib; command bodies import what they use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ueb.analysis.figures import KINDS as FIGURE_KINDS
from ueb.output import Output

if TYPE_CHECKING:
    from ueb.analysis.baseline import Baseline, Comparison, Moved
    from ueb.store import CellRecord


def _run_path(run: str) -> Path:
    p = Path(run)
    if not p.exists() and (Path("runs") / run).exists():
        p = Path("runs") / run
    return p


def _kinds(only: list[str]) -> list[str]:
    from ueb.errors import ConfigError

    chosen = [k.strip() for item in only for k in item.split(",") if k.strip()] or list(
        FIGURE_KINDS
    )
    bad = [k for k in chosen if k not in FIGURE_KINDS]
    if bad:
        raise ConfigError(f"unknown figure '{bad[0]}'", f"use {', '.join(FIGURE_KINDS)}")
    return chosen


def _metric(metric: str) -> str:
    from ueb.errors import ConfigError

    if metric not in ("final", "peak"):
        raise ConfigError(f"unknown metric '{metric}'", "use final or peak")
    return metric


def _device(device: str) -> str:
    if device == "cpu":
        return device
    from ueb.training import resolve_device

    return str(resolve_device(device))


OnlyOpt = Annotated[
    list[str],
    typer.Option(
        "--only",
        help="Figures to draw: heatmap, seeds, perturbations, tsne, gradcam (repeatable, comma lists).",
    ),
]
SamplesOpt = Annotated[
    int, typer.Option("--samples", help="Images per grid (one per class in turn).", min=1, max=32)
]
TsneOpt = Annotated[
    int,
    typer.Option("--tsne-per-class", help="Training images per class in the t-SNE plots.", min=2),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="Where saved victims run for t-SNE / Grad-CAM: cpu | auto | cuda[:N]."
    ),
]
MetricOpt = Annotated[str, typer.Option("--metric", help="final | peak")]


def plot(
    run: Annotated[str, typer.Argument(help="A run directory (or its name under runs/).")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for the PNG files (default: RUN/plots)."),
    ] = None,
    only: OnlyOpt = [],  # noqa: B006
    samples: SamplesOpt = 8,
    tsne_per_class: TsneOpt = 50,
    device: DeviceOpt = "cpu",
    metric: MetricOpt = "final",
) -> None:
    """Draw a run as PNG files: heatmaps, seeds, image grids (Fig. 5), t-SNE (Fig. 4), Grad-CAM (Fig. 3)."""
    from ueb.analysis.figures import make_figures
    from ueb.analysis.rundata import RunData

    out = Output()
    data = RunData.open(_run_path(run))
    folder = out_dir or data.run_dir / "plots"
    figures = make_figures(
        data, _kinds(only), _metric(metric), samples, tsne_per_class, _device(device), log=out.log
    )
    from ueb.atomic import write_bytes

    for fig in figures.figures:
        write_bytes(folder / f"{fig.name}.png", fig.png, what="the figures")
    for note in figures.notes:
        out.log(f"skipped {note}")
    out.info(f"wrote {len(figures.figures)} PNG files to {folder}")


def html(
    run: Annotated[str, typer.Argument(help="A run directory (or its name under runs/).")],
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="The HTML file (default: RUN/report.html).")
    ] = None,
    only: OnlyOpt = [],  # noqa: B006
    samples: SamplesOpt = 8,
    tsne_per_class: TsneOpt = 50,
    device: DeviceOpt = "cpu",
    metric: MetricOpt = "final",
) -> None:
    """One self-contained HTML page: Table I layout, heatmaps, image grids, manifest (`report --format html`)."""
    write_html(
        _run_path(run), out_file, _kinds(only), metric, samples, tsne_per_class, device, Output()
    )


def write_html(
    run_dir: Path,
    out_file: Path | None = None,
    kinds: list[str] | None = None,
    metric: str = "final",
    samples: int = 8,
    tsne_per_class: int = 50,
    device: str = "cpu",
    out: Output | None = None,
) -> Path:
    """Render RUN's HTML report to `out_file` (default RUN/report.html); what `ueb report --format html` calls."""
    from ueb.analysis import html_report
    from ueb.analysis.figures import make_figures
    from ueb.analysis.rundata import RunData
    from ueb.errors import UebError
    from ueb.report import build_table

    out = out or Output()
    data = RunData.open(run_dir)
    table = build_table(data.records, _metric(metric), data.config)  # type: ignore[arg-type]
    if data.state_line:
        table.notes.insert(0, data.state_line)
    figures = make_figures(
        data,
        kinds or list(FIGURE_KINDS),
        metric,
        samples,
        tsne_per_class,
        _device(device),
        log=out.log,
    )
    target = out_file or data.run_dir / "report.html"
    from ueb.atomic import write_text

    try:
        write_text(target, html_report.render(data, table, figures), what="the HTML report")
    except OSError as exc:  # pragma: no cover (write_text turns OSError into UebError)
        raise UebError(
            f"cannot write {target} ({exc.strerror})", "choose another --out file"
        ) from exc
    for note in figures.notes:
        out.log(f"skipped: {note}")
    out.info(f"wrote {target} ({len(figures.figures)} figures)")
    return target


def check(
    run: Annotated[str, typer.Argument(help="A run directory (or its name under runs/).")],
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline", "-b", help="A baseline .json, or NAME of benchmarks/baselines/NAME.json."
        ),
    ],
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance", "-t", help="Accuracy points a cell may move (default: the baseline's)."
        ),
    ] = None,
    spread_k: Annotated[
        float,
        typer.Option(
            "--spread-k",
            help="With several seeds a cell may also move k x the 95% Welch half-width of the difference (the table's within-noise rule at k=1).",
            min=0.0,
        ),
    ] = 1.0,
    min_coverage: Annotated[
        float,
        typer.Option(
            "--min-coverage",
            help="Share of the baseline's cells the run must have (default 1: all). A partial run, e.g. one dataset against the paper's tables: --min-coverage 0.2.",
            min=0.0,
            max=1.0,
        ),
    ] = 1.0,
    strict: Annotated[
        bool, typer.Option("--strict", help="Cells present on one side only also fail the check.")
    ] = False,
    show: Annotated[
        int, typer.Option("--show", help="List at most this many missing cells per side.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Compare every cell's seed mean with a stored baseline; exit 1 if any moved beyond the
    tolerance, or the run covers less of the baseline than --min-coverage, or nothing at all."""
    from ueb.analysis import baseline as bl
    from ueb.store import Store

    run_dir = _run_path(run)
    store = Store.open_existing(run_dir)
    records = store.records()
    base = bl.load(baseline)
    result = bl.compare(records, base, tolerance, spread_k)
    out = Output(json_mode=as_json)
    reason = _check_failure(result, records, base, run_dir, min_coverage, strict)
    moved_rows = [
        {
            "cell": m.label(),
            "baseline": f"{m.base_value:.2f}" if m.base_value is not None else "",
            "run": "failed" if m.run_value is None else f"{m.run_value:.2f}",
            "run_std": m.run_std,
            "run_n": m.run_n,
            "baseline_n": m.base_n,
            "delta": "" if m.delta is None else f"{m.delta:+.2f}",
            "allowed": f"{m.allowed:.2f}",
            "note": m.note or m.entry.source,
        }
        for m in result.moved
    ]
    if as_json:
        out.json(
            {
                "baseline": base.name,
                "ok": reason is None,
                "reason": reason,
                "tolerance": result.tolerance,
                "spread_k": result.k,
                "rule": result.rule(),
                "compared": result.compared,
                "baseline_cells": result.baseline_cells,
                "coverage": result.coverage,
                "min_coverage": min_coverage,
                "within": result.within,
                "moved": moved_rows,
                "missing_in_run": [e.label() for e in result.missing_in_run],
                "missing_in_baseline": [e.label() for e in result.missing_in_baseline],
                "version_changes": result.version_changes,
            }
        )
    else:
        out.log(f"{result.coverage_line()} of '{base.name}' (--min-coverage {min_coverage:.0%})")
        out.log(f"rule: {result.rule()}")
        if result.version_changes:
            out.warn(
                "the run's plugin versions differ from the baseline's ("
                + ", ".join(result.version_changes)
                + "): a difference may be an intended change; accept a new baseline if it is"
            )
        if result.moved:
            out.log(f"{len(result.moved)} cells moved beyond their tolerance from '{base.name}':")
            for m in result.moved:
                out.log(_moved_line(m))
        for what, entries in (
            ("in the baseline but not in the run", result.missing_in_run),
            ("in the run but not in the baseline", result.missing_in_baseline),
        ):
            if entries:
                out.log(f"{len(entries)} cells {what}" + (":" if show else ""))
                for e in entries[:show]:
                    out.log(f"  {e.label()}")
                if len(entries) > show:
                    out.log(f"  ... and {len(entries) - show} more")
        summary = (
            f"{result.within} cells within {result.tolerance:g} points (or their seeds' spread) of '{base.name}', {len(result.moved)} moved, "
            f"{len(result.missing_in_run)} missing in the run, {len(result.missing_in_baseline)} not in the baseline"
        )
        out.log(f"ok: {summary}" if reason is None else f"FAILED: {reason}")
        if reason is not None and result.compared:  # the counts behind the verdict
            out.log(summary)
    if reason is not None:
        raise typer.Exit(1)


def _check_failure(
    result: Comparison,
    records: list[CellRecord],
    base: Baseline,
    run_dir: Path,
    min_coverage: float,
    strict: bool,
) -> str | None:
    """The one-line reason a check fails (every cause, joined), or None when it passes."""
    if not base.cells:
        return f"baseline '{base.name}' has no cells"
    if not records:
        return f"run {run_dir} has no cells yet"
    if result.compared == 0:
        return f"the run shares no cell with baseline '{base.name}': wrong run or wrong baseline?"
    reasons = []
    if result.moved:
        reasons.append(
            f"{len(result.moved)} of {result.compared} compared cells moved beyond their tolerance"
        )
    if result.coverage + 1e-12 < min_coverage:
        reasons.append(
            f"{result.coverage_line()}, fewer than --min-coverage {min_coverage:.0%} "
            f"(run the missing cells, or pass --min-coverage {math.floor(result.coverage * 100) / 100:g} to accept a partial comparison)"
        )
    if strict and (result.missing_in_run or result.missing_in_baseline):
        reasons.append(
            f"--strict: {len(result.missing_in_run)} cells missing in the run, {len(result.missing_in_baseline)} not in the baseline"
        )
    return "; ".join(reasons) or None


def _moved_line(m: Moved) -> str:
    """One moved cell on one line, so that a narrow terminal wraps it instead of cutting numbers."""
    base = "" if m.base_value is None else f" vs baseline {m.base_value:.2f} (n={m.base_n})"
    if m.run_value is None:
        return f"  {m.label()}: {m.note}{base}"
    spread = "" if m.run_std is None else f" ± {m.run_std:.2f}"
    delta = "" if m.delta is None else f": {m.delta:+.2f}, allowed {m.allowed:.2f}"
    note = f" ({m.note})" if m.note else ""
    return f"  {m.label()}: {m.run_value:.2f}{spread} (n={m.run_n}){base}{delta}{note}"


baseline_app = typer.Typer(
    help="Stored numbers that `ueb check` compares runs with.", no_args_is_help=True
)


@baseline_app.command("accept")
def accept(
    run: Annotated[str, typer.Argument(help="A run directory (or its name under runs/).")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Baseline name (default: the run's id).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder of baselines.")] = Path(
        "benchmarks/baselines"
    ),
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", "-t", help="Default tolerance stored with it (accuracy points).", min=0.0
        ),
    ] = 1.0,
) -> None:
    """Write RUN's numbers as a baseline JSON with provenance (device, versions, profile, git commit, date)."""
    from ueb.analysis import baseline as bl
    from ueb.errors import ConfigError
    from ueb.store import Store

    run_dir = _run_path(run)
    store = Store.open_existing(run_dir)
    manifest = store.manifest()
    name = name or str(manifest.get("run_id") or run_dir.name)
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise ConfigError(
            f"baseline name '{name}' is not a plain file name", "use letters, digits, '-' and '_'"
        )
    b = bl.from_run(name, store.records(), manifest, run_dir, tolerance)
    path = bl.save(b, out_dir / f"{name}.json")
    failed = sum(e.accuracy is None for e in b.cells)
    Output().info(
        f"wrote {path}: {len(b.cells)} cells"
        + (f" ({failed} failed, stored as null)" if failed else "")
    )


def register(app: typer.Typer) -> None:
    """Attach the analysis commands to the `ueb` app."""
    app.command("plot")(plot)
    app.command("html")(html)
    app.command("check")(check)
    app.add_typer(baseline_app, name="baseline")
