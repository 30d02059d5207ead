"""The `ueb` command line (typer + rich).

Importing this module, `ueb --help` and `ueb list` never import torch: plugins register
"module:Class" strings, and everything heavy is imported inside command bodies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ueb.errors import ConfigError, UebError
from ueb.output import Output

app = typer.Typer(
    name="ueb",
    help="Benchmark unlearnable examples: which protection survives which countermeasure, on which architecture.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

KIND_ALIASES = {
    "poisoners": "poisoner",
    "poisoner": "poisoner",
    "countermeasures": "countermeasure",
    "countermeasure": "countermeasure",
    "victims": "victim",
    "victim": "victim",
    "datasets": "dataset",
    "dataset": "dataset",
    "detectors": "detector",
    "detector": "detector",
}


@app.callback()
def _root(
    plugins_dir: Annotated[
        Path | None,
        typer.Option(
            "--plugins-dir",
            envvar="UEB_PLUGINS_DIR",
            help="Also load plugin .py files from this folder.",
        ),
    ] = None,
) -> None:
    """Global options (the plugins folder is read before commands are built)."""


def _registry() -> Any:
    from ueb.registry import get_registry

    return get_registry()


# --------------------------------------------------------------------------- run


@app.command()
def run(
    poisoner: Annotated[
        list[str],
        typer.Option(
            "--poisoner",
            "-p",
            help="Poisoner names, globs, 'family:NAME', 'all' (ueb's own) or 'all+' (with third-party plugins); repeatable, comma lists.",
        ),
    ] = [],  # noqa: B006
    countermeasures: Annotated[
        list[str],
        typer.Option(
            "--countermeasures",
            "-c",
            help="Countermeasure names, globs, 'all' (ueb's own) or 'all+' (with third-party plugins).",
        ),
    ] = [],  # noqa: B006
    victim: Annotated[
        list[str],
        typer.Option("--victim", "-v", help="Victim architectures (default: the profile's)."),
    ] = [],  # noqa: B006
    dataset: Annotated[
        list[str], typer.Option("--dataset", "-d", help="Datasets (default: the profile's).")
    ] = [],  # noqa: B006
    seed: Annotated[
        list[int], typer.Option("--seed", "-s", help="Seeds (repeatable; default: the profile's).")
    ] = [],  # noqa: B006
    poison_seed: Annotated[
        list[int],
        typer.Option(
            "--poison-seed",
            help="Nested design: every --seed victim trains on the poison of every poison seed given here (repeatable); tables then split the spread into poison and victim variance.",
        ),
    ] = [],  # noqa: B006
    profile: Annotated[
        str | None, typer.Option("--profile", help="smoke | quick | paper, or a profile .toml.")
    ] = None,
    matrix: Annotated[
        Path | None, typer.Option("--matrix", help="A TOML matrix file; flags override it.")
    ] = None,
    param: Annotated[
        list[str],
        typer.Option("--param", help="PLUGIN.KEY=VALUE (or KEY=VALUE for the selected poisoners)."),
    ] = [],  # noqa: B006
    grid: Annotated[
        list[str],
        typer.Option(
            "--grid",
            help="PLUGIN.KEY=V1,V2,...: one variant of the plugin per value (e.g. iss-jpeg.quality=2,4,10).",
        ),
    ] = [],  # noqa: B006
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root", help="Folder with dataset files (CIFAR archives, ImageNet folders)."
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="Where results go (default: runs/<profile>-<config hash>)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Cache for poisons and trained models (default: $UEB_CACHE or ~/.cache/ueb).",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N")
    ] = None,
    poison_fraction: Annotated[
        list[float],
        typer.Option(
            "--poison-fraction",
            help="Poison only this fraction of the training set (repeatable: a matrix axis).",
        ),
    ] = [],  # noqa: B006
    save_models: Annotated[
        str | None,
        typer.Option("--save-models", help="Keep trained victims: none | vanilla | all."),
    ] = None,
    executor: Annotated[
        str | None, typer.Option("--executor", help="local (default) | ray")
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers",
            "-w",
            help="Cells run in parallel (local process pool, or Ray tasks): a number, or auto "
            "(default: one one-thread process per core on a CPU, 1 on a GPU).",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster address (default: start a local Ray)."),
    ] = None,
    gpus_per_cell: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-cell", help="Ray: GPU share per cell (e.g. 0.25: four cells per GPU)."
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="Accuracy shown in the table: final | peak.")
    ] = "final",
    no_clean: Annotated[
        bool, typer.Option("--no-clean", help="Skip the clean-training reference row.")
    ] = False,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Stop at the first failing cell.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Print the full traceback (file:line) of a failing plugin, poison or cell (also UEB_DEBUG=1).",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bars or per-cell lines (failures are still reported).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Resolve and check everything, print the full configuration, compute nothing.",
        ),
    ] = False,
    detectors: Annotated[
        list[str],
        typer.Option(
            "--detectors",
            help="Detectors to run on every poisoned set after the matrix (names, globs or 'all'; default: none).",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Run the poisoner x countermeasure x victim matrix and print the Table I layout."""
    if debug:
        os.environ["UEB_DEBUG"] = "1"  # workers inherit it
    from ueb.config import build_config, load_matrix_file, parse_grid_flags, parse_param_flags
    from ueb.plan import resolve

    out = Output()
    registry = _registry()
    file_values = load_matrix_file(matrix) if matrix else {}
    flags: dict[str, Any] = {
        "poisoners": tuple(poisoner) or None,
        "countermeasures": tuple(countermeasures) or None,
        "victims": tuple(victim) or None,
        "datasets": tuple(dataset) or None,
        "seeds": tuple(seed) or None,
        "poison_seeds": tuple(poison_seed) or None,
        "profile": profile,
        "data_root": str(data_root) if data_root else None,
        "run_dir": str(run_dir) if run_dir else None,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "device": device,
        "fail_fast": fail_fast or None,
        "include_clean": False if no_clean else None,
        "poison_fractions": tuple(poison_fraction) or None,
        "save_models": save_models,
        "executor": executor,
        "workers": workers if workers is not None or "workers" in file_values else "auto",
        "ray_address": address,
        "gpus_per_cell": gpus_per_cell,
        "grid": parse_grid_flags(grid) or None,
    }
    if metric not in ("final", "peak"):
        raise ConfigError(f"unknown metric '{metric}'", "use final or peak")
    config = build_config(file_values, flags)
    if param:
        targets = tuple(registry.select("poisoner", config.poisoners))
        config = build_config(file_values, {**flags, "params": parse_param_flags(param, targets)})
    plan = resolve(config, registry)  # every check; nothing is computed before this returns
    from ueb.detection import resolve_detectors, run_detection

    detector_specs = resolve_detectors(plan, registry, detectors)  # checked before any work too

    from ueb.progress import Progress
    from ueb.runner import MatrixRunner, default_run_dir

    path = default_run_dir(plan)
    if dry_run:
        out.introduce(plan, path, None)
        out.json(plan.describe())
        return
    progress = Progress(enabled=not quiet, console=out.console)
    runner = MatrixRunner(
        plan,
        registry,
        path,
        progress,
        log=out.log if not quiet else (lambda _m: None),
        warn=out.warn,
    )
    out.introduce(plan, path, runner.preview(), brief=quiet)
    from ueb.stopping import RunInterrupted, exit_code_of, stop_on_signals

    try:
        with stop_on_signals():
            summary = runner.execute()
    except KeyboardInterrupt as exc:
        done = len(runner.store.done_ids())
        why = f"stopped by {exc.name}" if isinstance(exc, RunInterrupted) else "interrupted"
        out.error(
            f"{why}: {done} of {len(plan.cells)} cells are saved in {path} (cells in flight are "
            "recomputed); re-run the same command to resume"
        )
        raise typer.Exit(exit_code_of(exc)) from None
    try:
        _write_reports(runner.store, path, metric, out)
    finally:
        runner.store.close()  # a finished run is one self-contained file
    run_detection(plan, registry, detector_specs, path, out, quiet=quiet)
    out.info(
        f"{summary.ok} cells done, {summary.skipped} reused, {summary.failed} failed in {summary.seconds:.0f}s; results in {path}"
        + (
            f" (`ueb show --run {path} -p POISONER -c COUNTERMEASURE` for one cell)"
            if summary.ok
            else ""
        )
    )
    if summary.failed:
        raise typer.Exit(1)


def _write_reports(store: Any, path: Path, metric: str, out: Output) -> None:
    """Every table format beside the results (each written whole or not at all), then the
    terminal's."""
    from ueb.atomic import write_text
    from ueb.report import EXTENSIONS, RENDERERS, build_table, to_markdown

    table = build_table(store.records(), metric, store.manifest().get("config"))  # type: ignore[arg-type]
    _note_state(table, store)
    texts = {fmt: render(table) for fmt, render in RENDERERS.items()}
    for fmt, text in texts.items():
        write_text(path / f"table.{EXTENSIONS[fmt]}", text, what="the result tables")
    out.report_table(table, plain=to_markdown(table))


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


def _note_state(table: Any, store: Any, out: Output | None = None) -> None:
    """A table of an unfinished run says so first, in every format that has notes, and on
    stderr (CSV has no notes)."""
    line = store.state().line()
    if line:
        table.notes.insert(0, line)
        if out is not None:
            out.warn(line)


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
        str,
        typer.Option(
            "--countermeasure", help="With --pivot victim: which countermeasure's numbers."
        ),
    ] = "vanilla",
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


# --------------------------------------------------------------------------- list / plugins / profiles


@app.command("list")
def list_(
    kind: Annotated[
        str | None,
        typer.Argument(help="poisoners | countermeasures | victims | datasets (default: all)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List what the installed plugins provide; poisoners by family, and what `all` leaves out."""
    from ueb.registry import KINDS

    registry = _registry()
    if kind is not None and kind not in KIND_ALIASES:
        raise ConfigError(
            f"unknown kind '{kind}'", "use poisoners, countermeasures, victims or datasets"
        )
    kinds = [KIND_ALIASES[kind]] if kind else list(KINDS)
    rows = [_list_row(registry, k, n) for k in kinds for n in registry.ordered_names(k)]
    out = Output(json_mode=as_json)
    if as_json:
        out.json(rows)
        return
    # One table per kind (poisoners: per family), with only the columns that say something, so
    # that the summary keeps a readable width in an 80-column terminal.
    several_dists = len({r["distribution"] for r in rows}) > 1
    for k in kinds:
        mine = [r for r in rows if r["kind"] == k]
        if not mine:
            continue
        columns = [
            "name",
            *(["stage"] if k == "countermeasure" else []),
            "not in all",
            "summary",
            *(["distribution"] if several_dists else []),
        ]
        groups = _family_groups(mine) if k == "poisoner" else [("", mine)]
        for family, group in groups:
            title = f"{k}s: {family} ({len(group)})" if family else f"{k}s ({len(group)})"
            if k == "poisoner" and not family:
                title = f"{k}s: no family ({len(group)})" if len(groups) > 1 else title
            shown = [{**r, "not in all": r["not_in_all"] or ""} for r in group]
            if not any(r["not_in_all"] for r in group):
                shown = [{c: v for c, v in r.items() if c != "not in all"} for r in shown]
            out.rows(shown, columns=columns, title=title, wrap="summary")
    reasons = {r["not_in_all"] for r in rows if r["not_in_all"]}
    if reasons:
        import textwrap

        legend = "not in all: " + "; ".join(
            _NOT_IN_ALL[r] for r in ("hidden", "third-party") if r in reasons
        )
        out.info(textwrap.fill(legend, width=max(40, out.console.width)))


_NOT_IN_ALL = {
    "hidden": "hidden = kept out by its registration (reference rows, controls, variants), "
    "select it by name",
    "third-party": "third-party = from another distribution, select it with all+, its name, "
    "a glob or family:NAME",
}


def _list_row(registry: Any, kind: str, name: str) -> dict[str, Any]:
    """One `ueb list` row: the entry, its listing facts and whether `all` selects it."""
    e = registry.entries[kind][name]
    meta = {m: str(v) for m, v in e.meta.items()}
    if kind == "countermeasure":
        meta["stage"] = str(e.stage())
    reason = registry.left_out_of_all(kind, name)
    return {
        "kind": kind,
        "name": e.name,
        "summary": e.summary,
        "plugin": e.plugin,
        "distribution": e.distribution,
        **meta,
        "in_all": reason is None,
        "not_in_all": reason,
    }


def _family_groups(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows grouped by `family`: the built-in families in their documented order, then any
    other family by name, then the rows without one; rows keep their order in a group."""
    from ueb.registry import FAMILIES

    found = {str(r.get("family", "")) for r in rows}
    order = [f for f in FAMILIES if f in found]
    order += sorted(f for f in found if f and f not in FAMILIES)
    order += [""] if "" in found else []
    return [(f, [r for r in rows if str(r.get("family", "")) == f]) for f in order]


@app.command()
def plugins(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Loaded plugin modules: where they come from, what they registered, which failed."""
    registry = _registry()
    rows = [
        {
            "plugin": rec.name,
            "distribution": rec.distribution,
            "version": rec.version,
            "status": "ok" if rec.ok else f"FAILED: {rec.error}",
            "registered": ", ".join(rec.registered),
        }
        for rec in sorted(registry.host.records.values(), key=lambda r: (r.distribution, r.name))
    ]
    out = Output(json_mode=as_json)
    if as_json:
        out.rows(rows, columns=["plugin", "distribution", "version", "status", "registered"])
        return
    _print_plugins(out, rows)


def _print_plugins(out: Output, rows: list[dict[str, str]]) -> None:
    """One block per plugin module, legible at any width: a head line with the name,
    distribution, version and status in full, then what it registered (and a failure's reason),
    wrapped at word boundaries under it."""
    from rich.padding import Padding
    from rich.text import Text

    console = out.console
    for row in rows:
        ok = row["status"] == "ok"
        head = Text()
        head.append(row["plugin"], style="bold")
        head.append(f"  {row['distribution']} {row['version']}  ")
        head.append("ok" if ok else "FAILED", style="green" if ok else "bold red")
        console.print(head, overflow="fold")
        detail = row["registered"] or "(nothing registered)"
        if not ok:
            detail = row["status"].removeprefix("FAILED: ")
        console.print(Padding(Text(detail, overflow="fold"), (0, 0, 0, 4), expand=False))


@app.command()
def profiles(
    presets: Annotated[
        bool,
        typer.Option("--presets", help="Also list the scale presets the installed plugins ship."),
    ] = False,
) -> None:
    """The available profiles and what they set (and, with --presets, what plugins bring)."""
    from ueb.profile import available_profiles, load_profile

    if presets:
        registry = _registry()
        rows_p = []
        for k, names in registry.entries.items():
            for n, e in names.items():
                for scale, values in sorted((getattr(e.load_class(), "presets", {}) or {}).items()):
                    rows_p.append(
                        {
                            "plugin": n,
                            "kind": k,
                            "scale": scale,
                            "settings": ", ".join(f"{a}={b}" for a, b in values.items()),
                        }
                    )
        if rows_p:
            Output().rows(
                rows_p,
                columns=["plugin", "kind", "scale", "settings"],
                title="Scale presets shipped by plugins (under the profile's [plugins.NAME] and --param)",
                wrap="settings",
            )
        else:
            Output().info(
                "no installed plugin ships scale presets (the profiles' [plugins.NAME] tables set the built-ins' scale)"
            )
    rows = []
    for name in available_profiles():
        p = load_profile(name)
        t = p.training
        rows.append(
            {
                "profile": name,
                "victims": ",".join(p.victims),
                "datasets": ",".join(p.datasets),
                "steps": str(t.iterations),
                "batch": str(t.batch_size),
                "description": p.description,
            }
        )
    Output().rows(
        rows,
        columns=["profile", "victims", "datasets", "steps", "batch", "description"],
        title="Profiles",
        wrap="description",
    )


# --------------------------------------------------------------------------- entry point

from ueb import cli_analysis  # noqa: E402  (analysis commands: plot, check, baseline)

cli_analysis.add_commands(app)

from ueb import cli_authoring  # noqa: E402  (plugin authors: ueb new plugin)

cli_authoring.add_commands(app)


def get_app() -> typer.Typer:
    """The app with plugin-contributed commands added (loads plugins, not torch)."""
    from ueb.plugins import get_host

    host = get_host()
    if not getattr(app, "_ueb_plugin_commands", False):
        for impl in sorted(
            host.pm.hook.register_commands.get_hookimpls(), key=lambda i: i.plugin_name
        ):
            try:
                impl.function(cli=app)
            except Exception as exc:
                host.fail_registered(impl.plugin_name, exc)
        app._ueb_plugin_commands = True  # type: ignore[attr-defined]
    return app


def _take_plugins_dir(argv: list[str]) -> list[str]:
    """`--plugins-dir DIR` works before or after the subcommand: it is read here (plugins load
    before the commands are built) and removed from the arguments."""
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--plugins-dir":
            if i + 1 >= len(argv):
                raise UebError("--plugins-dir needs a folder", "write --plugins-dir DIR")
            os.environ["UEB_PLUGINS_DIR"] = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--plugins-dir="):
            os.environ["UEB_PLUGINS_DIR"] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest


def _click_error_types() -> tuple[type[BaseException], ...]:
    """Click's usage-error base class, and typer's vendored copy of it (typer >= 0.2x ships its own)."""
    import click

    types: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:  # older typer: uses click itself
        pass
    else:
        types.append(VendoredClickException)
    return tuple(types)


def _abort_types() -> tuple[type[BaseException], ...]:
    import click

    return tuple({click.exceptions.Abort, typer.Abort})


def main() -> None:
    """Entry point. Runs the app with `standalone_mode=False` so that ueb's own errors become one
    line, which means exit codes (`raise typer.Exit(1)` comes back as a return value) and usage
    errors must be handled here."""
    try:
        args = _take_plugins_dir(sys.argv[1:])
        code = get_app()(args=args, prog_name="ueb", standalone_mode=False)
    except UebError as exc:
        if os.environ.get("UEB_DEBUG"):
            import traceback

            traceback.print_exception(exc)
        Output().error(exc.line())
        sys.exit(2)
    except _abort_types():
        Output().error("aborted")
        sys.exit(130)
    except _click_error_types() as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        Output().error("interrupted; re-run the same command to resume")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

__all__ = ["app", "get_app", "main"]
