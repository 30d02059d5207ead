"""Reading a run back: `ueb report`, `ueb show`, `ueb export`.

Importing this never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ueb.cli_app import _note_state, app
from ueb.errors import ConfigError, UebError
from ueb.output import Output

# --------------------------------------------------------------------------- report / show / export


def _run_path(run: str | None) -> Path:
    """A run directory given as a path or a name under runs/; None: the latest run there."""
    if run is None:
        from ueb.store import DB_NAME

        found = sorted(
            (p.stat().st_mtime, p.parent) for p in Path("runs").glob(f"*/{DB_NAME}") if p.is_file()
        )
        if not found:
            raise UebError(
                "no run given and none under runs/", "pass a run directory printed by `ueb run`"
            )
        return found[-1][1]
    p = Path(run)
    if not p.exists() and (Path("runs") / run).exists():
        p = Path("runs") / run
    return p


# The format `-o FILE` writes when --format is not given, by the file's extension.
_FORMAT_BY_SUFFIX = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".csv": "csv",
    ".tex": "latex",
    ".json": "json",
    ".html": "html",
    ".htm": "html",
}


@app.command()
def report(
    run: Annotated[
        str | None,
        typer.Argument(help="A run directory (or its name under runs/); default: the latest."),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="rich | markdown | csv | latex | json | html (default: rich, or by -o's extension)",
        ),
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="final | peak")] = "final",
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file instead of the terminal.")
    ] = None,
    pivot: Annotated[
        str | None,
        typer.Option("--pivot", help="'victim': one column per architecture (Table III layout)."),
    ] = None,
    countermeasure: Annotated[
        str | None,
        typer.Option(
            "--countermeasure",
            help="With --pivot victim: which countermeasure's numbers (default: plain training).",
        ),
    ] = None,
) -> None:
    """Render a run's results in the paper's Table I layout (or pivoted by victim)."""
    if format is None:
        format = _FORMAT_BY_SUFFIX.get(out_file.suffix.lower(), "markdown") if out_file else "rich"
    elif format == "rich" and out_file is not None:
        format = "markdown"  # a file gets the plain table, never nothing
    if format == "html":
        from ueb.analysis.commands import write_html

        write_html(_run_path(run), out_file, metric=metric)
        return
    from ueb.report import RENDERERS, build_table, pivot_by_victim, to_markdown
    from ueb.store import Store

    out = Output()
    if metric not in ("final", "peak"):
        raise ConfigError(f"unknown metric '{metric}'", "use final or peak")
    if pivot not in (None, "victim"):
        raise ConfigError(f"unknown pivot '{pivot}'", "use --pivot victim")
    if format not in ("rich", *RENDERERS):
        raise ConfigError(f"unknown format '{format}'", f"use rich, html, {', '.join(RENDERERS)}")
    store = Store.open_existing(_run_path(run), readonly=True)
    config = store.manifest().get("config")
    chosen: Any = metric  # checked above: final | peak
    if pivot == "victim":
        table = pivot_by_victim(store.records(), countermeasure, chosen, config)
    else:
        table = build_table(store.records(), chosen, config)
    _note_state(table, store, out)
    if format == "json":
        from ueb.detection import load_summary

        table.detection = load_summary(_run_path(run))
    if format == "rich":
        out.report_table(table, plain=to_markdown(table))
        return
    if format not in RENDERERS:
        raise ConfigError(f"unknown format '{format}'", f"use rich, {', '.join(RENDERERS)}")
    text = RENDERERS[format](table)
    if out_file:
        from ueb.atomic import write_text

        write_text(out_file, text, what="the report")
        out.info(f"wrote {out_file}")
    else:
        out.raw(text)


@app.command()
def show(
    cell: Annotated[
        str | None,
        typer.Argument(
            help="A cell id or a unique prefix (printed by `ueb run`); or select with the options."
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            "-r",
            help="The run directory (default: the run under runs/ that holds the cell id, else the latest).",
        ),
    ] = None,
    poisoner: Annotated[
        str | None, typer.Option("--poisoner", "-p", help="Select the cell by poisoner ...")
    ] = None,
    countermeasure: Annotated[
        str | None, typer.Option("--countermeasure", "-c", help="... countermeasure ...")
    ] = None,
    victim: Annotated[str | None, typer.Option("--victim", "-v", help="... victim ...")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="... dataset ...")] = None,
    seed: Annotated[int | None, typer.Option("--seed", "-s", help="... and seed.")] = None,
    config: Annotated[
        bool, typer.Option("--config", help="Print the run's full resolved configuration instead.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The whole stored record as JSON (no summary).")
    ] = False,
) -> None:
    """Everything stored about one cell: parameters, versions, accuracy curve, poison facts, probe."""
    from dataclasses import asdict

    from ueb.store import Store

    run_dir = _run_path(run) if run is not None else _run_of_cell(cell)
    store = Store.open_existing(run_dir, readonly=True)
    if config:
        Output().json(store.manifest().get("config", {}))
        return
    wanted = {
        "poisoner": poisoner,
        "countermeasure": countermeasure,
        "victim": victim,
        "dataset": dataset,
        "seed": seed,
    }
    chosen = {k: v for k, v in wanted.items() if v is not None}
    if cell is None and not chosen:
        raise ConfigError(
            "no cell named", "give a cell id (printed by `ueb run`) or select with -p/-c/-v/-d/-s"
        )
    matches = store.find(cell) if cell else store.records()
    matches = [r for r in matches if all(getattr(r, k) == v for k, v in chosen.items())]
    if len(matches) != 1:
        listed = "; ".join(
            f"{r.cell_id[:10]} {r.poisoner}/{r.countermeasure}/{r.victim}/seed {r.seed}"
            for r in matches[:6]
        )
        raise UebError(
            f"{len(matches)} cells match in {run_dir}"
            + (f": {listed}" + (" ..." if len(matches) > 6 else "") if matches else ""),
            "narrow it with -p/-c/-v/-d/-s or a longer id prefix",
        )
    if as_json:
        Output().json(asdict(matches[0]))
        return
    Output().raw(cell_summary(matches[0], run_dir))


def _run_of_cell(cell: str | None) -> Path:
    """The run under runs/ whose store holds a cell with this id (prefix); else the latest."""
    if cell:
        from ueb.store import DB_NAME, Store

        for db in sorted(Path("runs").glob(f"*/{DB_NAME}"), key=lambda p: -p.stat().st_mtime):
            try:
                store = Store.open_existing(db.parent, readonly=True)
            except UebError:
                continue
            try:
                if store.find(cell):
                    return db.parent
            finally:
                store.close()
    return _run_path(None)


def cell_summary(r: Any, run_dir: Path) -> str:
    """A few lines a person reads first; `--json` has the whole record."""
    facts = r.poison_facts or {}
    probe = r.probe or {}
    lines = [
        f"cell {r.cell_id} in {run_dir}",
        f"  {r.dataset} | {r.poisoner} | {r.countermeasure} | {r.victim} | seed {r.seed}"
        + (f" | poison seed {r.poison_seed}" if r.poison_seed not in (None, r.seed) else "")
        + (f" | {r.poison_fraction:.0%} poisoned" if r.poison_fraction < 1 else ""),
        f"  status: {r.status}" + (f" ({r.error})" if r.error else ""),
    ]
    if r.status == "ok":
        lines.append(
            f"  test accuracy: final {r.final_acc:.2f}%, peak {r.peak_acc:.2f}% at step {r.peak_step}"
            + (
                f"; clean reference {r.clean_final_acc:.2f}%"
                if r.clean_final_acc is not None
                else ""
            )
        )
        lines.append(
            f"  time: poison {r.poison_seconds or 0:.1f} s, training {r.train_seconds or 0:.1f} s"
            + (
                f" (shared with cell {r.extra['training_from'][:10]})"
                if (r.extra or {}).get("training_from")
                else ""
            )
            + (
                f"; reused from {r.extra['reused_from']}"
                if (r.extra or {}).get("reused_from")
                else ""
            )
        )
    if facts:
        shown = {k: facts[k] for k in ("psnr", "linf_max", "poison_sha256", "caveat") if k in facts}
        if shown:
            lines.append("  poison: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if probe:
        lines.append(
            f"  shortcut probe: target rate {probe.get('target_rate')}, latched {probe.get('latched')}"
        )
    lines.append(
        f"  versions: poisoner {r.poisoner_version}, countermeasure {r.countermeasure_version}, victim {r.victim_version}; git {r.git}; {r.device}"
    )
    lines.append("  (`ueb show ... --json` for the whole record: parameters, curve, facts)")
    return "\n".join(lines) + "\n"


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="A run directory.")],
    format: Annotated[str, typer.Option("--format", "-f", help="json | csv")] = "json",
    out_file: Annotated[Path | None, typer.Option("--out", "-o")] = None,
) -> None:
    """Export every cell record (and the manifest, for JSON)."""
    from ueb.store import Store

    if format not in ("json", "csv"):
        raise ConfigError(f"unknown export format '{format}'", "use json or csv")
    store = Store.open_existing(_run_path(run), readonly=True)
    text = store.export_json() if format == "json" else store.export_csv()
    if out_file:
        from ueb.atomic import write_text

        write_text(out_file, text, what="the export")
    else:
        Output().raw(text)
