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

from ueb.errors import UebError
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
}


@app.callback()
def _root(
    plugins_dir: Annotated[
        Path | None,
        typer.Option("--plugins-dir", envvar="UEB_PLUGINS_DIR", help="Also load plugin .py files from this folder."),
    ] = None,
) -> None:
    """Global options (the plugins folder is read before commands are built)."""


def _registry() -> Any:
    from ueb.registry import get_registry

    return get_registry()


# --------------------------------------------------------------------------- run


@app.command()
def run(
    poisoner: Annotated[list[str], typer.Option("--poisoner", "-p", help="Poisoner names, globs or 'all' (repeatable, comma lists).")] = [],  # noqa: B006
    countermeasures: Annotated[list[str], typer.Option("--countermeasures", "-c", help="Countermeasure names, globs or 'all'.")] = [],  # noqa: B006
    victim: Annotated[list[str], typer.Option("--victim", "-v", help="Victim architectures (default: the profile's).")] = [],  # noqa: B006
    dataset: Annotated[list[str], typer.Option("--dataset", "-d", help="Datasets (default: the profile's).")] = [],  # noqa: B006
    seed: Annotated[list[int], typer.Option("--seed", "-s", help="Seeds (repeatable; default: the profile's).")] = [],  # noqa: B006
    profile: Annotated[str | None, typer.Option("--profile", help="smoke | quick | paper, or a profile .toml.")] = None,
    matrix: Annotated[Path | None, typer.Option("--matrix", help="A TOML matrix file; flags override it.")] = None,
    param: Annotated[list[str], typer.Option("--param", help="PLUGIN.KEY=VALUE (or KEY=VALUE for the selected poisoners).")] = [],  # noqa: B006
    grid: Annotated[list[str], typer.Option("--grid", help="PLUGIN.KEY=V1,V2,...: one variant of the plugin per value (e.g. iss-jpeg.quality=2,4,10).")] = [],  # noqa: B006
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Folder with dataset files (CIFAR archives, ImageNet folders).")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where results go (default: runs/<profile>-<config hash>).")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Cache for poisons and trained models (default: $UEB_CACHE or ~/.cache/ueb).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = None,
    poison_fraction: Annotated[list[float], typer.Option("--poison-fraction", help="Poison only this fraction of the training set (repeatable: a matrix axis).")] = [],  # noqa: B006
    save_models: Annotated[str | None, typer.Option("--save-models", help="Keep trained victims: none | vanilla | all.")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="local (default) | ray")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Cells run in parallel (local process pool, or Ray tasks).")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: start a local Ray).")] = None,
    gpus_per_cell: Annotated[float | None, typer.Option("--gpus-per-cell", help="Ray: GPU share per cell (e.g. 0.25: four cells per GPU).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="Accuracy shown in the table: final | peak.")] = "final",
    no_clean: Annotated[bool, typer.Option("--no-clean", help="Skip the clean-training reference row.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failing cell.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run the poisoner x countermeasure x victim matrix and print the Table I layout."""
    from ueb.config import (
        build_config,
        load_matrix_file,
        parse_grid_flags,
        parse_param_flags,
        resolve,
        with_run_dir,
    )

    out = Output()
    registry = _registry()
    file_values = load_matrix_file(matrix) if matrix else {}
    flags: dict[str, Any] = {
        "poisoners": tuple(poisoner) or None,
        "countermeasures": tuple(countermeasures) or None,
        "victims": tuple(victim) or None,
        "datasets": tuple(dataset) or None,
        "seeds": tuple(seed) or None,
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
        "workers": workers,
        "ray_address": address,
        "gpus_per_cell": gpus_per_cell,
        "grid": parse_grid_flags(grid) or None,
    }
    config = build_config(file_values, flags)
    if param:
        targets = tuple(registry.select("poisoner", config.poisoners))
        config = build_config(file_values, {**flags, "params": parse_param_flags(param, targets)})
    resolved = resolve(config, registry)
    path = with_run_dir(resolved)
    out.config(resolved.describe(), path)

    from ueb.progress import Progress
    from ueb.runner import MatrixRunner

    progress = Progress(enabled=not quiet, console=out.console)
    runner = MatrixRunner(resolved, registry, path, progress, log=out.log if not quiet else (lambda _m: None))
    try:
        summary = runner.execute()
    except KeyboardInterrupt:
        out.error(f"interrupted; finished cells are saved in {path} (re-run the same command to resume)")
        raise typer.Exit(130) from None
    _write_reports(runner.store, path, metric, out)
    out.info(
        f"{summary.ok} cells done, {summary.skipped} reused, {summary.failed} failed in {summary.seconds:.0f}s; results in {path}"
    )
    if summary.failed:
        raise typer.Exit(1)


def _write_reports(store: Any, path: Path, metric: str, out: Output) -> None:
    from ueb.report import EXTENSIONS, RENDERERS, build_table, to_markdown, to_rich

    table = build_table(store.records(), metric, store.manifest().get("config"))  # type: ignore[arg-type]
    for fmt, render in RENDERERS.items():
        (path / f"table.{EXTENSIONS[fmt]}").write_text(render(table))
    out.table(to_rich(table), plain=to_markdown(table))


# --------------------------------------------------------------------------- report / show / export


def _run_path(run: str) -> Path:
    p = Path(run)
    if not p.exists() and (Path("runs") / run).exists():
        p = Path("runs") / run
    return p


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="A run directory (or its name under runs/).")],
    format: Annotated[str, typer.Option("--format", "-f", help="rich | markdown | csv | latex | json | html")] = "rich",
    metric: Annotated[str, typer.Option("--metric", help="final | peak")] = "final",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of the terminal.")] = None,
    pivot: Annotated[str | None, typer.Option("--pivot", help="'victim': one column per architecture (Table III layout).")] = None,
    countermeasure: Annotated[str, typer.Option("--countermeasure", help="With --pivot victim: which countermeasure's numbers.")] = "vanilla",
) -> None:
    """Render a run's results in the paper's Table I layout (or pivoted by victim)."""
    if format == "html":
        from ueb.analysis.commands import write_html

        write_html(_run_path(run), out_file, metric=metric)
        return
    from ueb.errors import ConfigError
    from ueb.report import RENDERERS, build_table, pivot_by_victim, to_markdown, to_rich
    from ueb.store import Store

    out = Output()
    store = Store.open_existing(_run_path(run))
    if metric not in ("final", "peak"):
        raise ConfigError(f"unknown metric '{metric}'", "use final or peak")
    if pivot not in (None, "victim"):
        raise ConfigError(f"unknown pivot '{pivot}'", "use --pivot victim")
    if pivot == "victim":
        table = pivot_by_victim(store.records(), countermeasure, metric, store.manifest().get("config"))  # type: ignore[arg-type]
    else:
        table = build_table(store.records(), metric, store.manifest().get("config"))  # type: ignore[arg-type]
    if format == "rich":
        out.table(to_rich(table), plain=to_markdown(table))
        return
    if format not in RENDERERS:
        raise ConfigError(f"unknown format '{format}'", f"use rich, {', '.join(RENDERERS)}")
    text = RENDERERS[format](table)
    if out_file:
        out_file.write_text(text)
        out.info(f"wrote {out_file}")
    else:
        out.raw(text)


@app.command()
def show(
    cell: Annotated[str, typer.Argument(help="A cell id (or a unique prefix of one).")],
    run: Annotated[str, typer.Option("--run", "-r", help="The run directory.")] = ".",
) -> None:
    """Everything stored about one cell: parameters, versions, accuracy curve, poison facts."""
    from dataclasses import asdict

    from ueb.store import Store

    store = Store.open_existing(_run_path(run))
    matches = store.find(cell)
    if len(matches) != 1:
        raise UebError(f"{len(matches)} cells match '{cell}' in {run}", "give a longer prefix (see the table.json or `ueb export`)")
    Output().json(asdict(matches[0]))


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="A run directory.")],
    format: Annotated[str, typer.Option("--format", "-f", help="json | csv")] = "json",
    out_file: Annotated[Path | None, typer.Option("--out", "-o")] = None,
) -> None:
    """Export every cell record (and the manifest, for JSON)."""
    from ueb.errors import ConfigError
    from ueb.store import Store

    store = Store.open_existing(_run_path(run))
    if format not in ("json", "csv"):
        raise ConfigError(f"unknown export format '{format}'", "use json or csv")
    text = store.export_json() if format == "json" else store.export_csv()
    if out_file:
        out_file.write_text(text)
    else:
        Output().raw(text)


# --------------------------------------------------------------------------- list / plugins / profiles


@app.command("list")
def list_(
    kind: Annotated[str | None, typer.Argument(help="poisoners | countermeasures | victims | datasets (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List what the installed plugins provide."""
    from ueb.errors import ConfigError
    from ueb.registry import KINDS

    registry = _registry()
    if kind is not None and kind not in KIND_ALIASES:
        raise ConfigError(f"unknown kind '{kind}'", "use poisoners, countermeasures, victims or datasets")
    kinds = [KIND_ALIASES[kind]] if kind else list(KINDS)
    rows = [
        {"kind": k, "name": e.name, "summary": e.summary, "plugin": e.plugin, "distribution": e.distribution, **{m: str(v) for m, v in e.meta.items()}}
        for k in kinds
        for e in (registry.entries[k][n] for n in registry.names(k))
    ]
    out = Output(json_mode=as_json)
    out.rows(rows, columns=["kind", "name", "stage", "summary", "distribution"], title="Registered plugins")


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
    Output(json_mode=as_json).rows(rows, columns=["plugin", "distribution", "version", "status", "registered"], title="Plugins")


@app.command()
def profiles() -> None:
    """The available profiles and what they set."""
    from ueb.profile import available_profiles, load_profile

    rows = []
    for name in available_profiles():
        p = load_profile(name)
        t = p.training
        rows.append(
            {
                "profile": name,
                "victims": ",".join(p.victims),
                "datasets": ",".join(p.datasets),
                "iterations": str(t.iterations),
                "batch": str(t.batch_size),
                "description": p.description,
            }
        )
    Output().rows(rows, columns=["profile", "victims", "datasets", "iterations", "batch", "description"], title="Profiles")


# --------------------------------------------------------------------------- entry point

from ueb import cli_analysis  # noqa: E402  (analysis commands: plot, check, baseline)

cli_analysis.add_commands(app)


def get_app() -> typer.Typer:
    """The app with plugin-contributed commands added (loads plugins, not torch)."""
    from ueb.plugins import get_host

    host = get_host()
    if not getattr(app, "_ueb_plugin_commands", False):
        for impl in sorted(host.pm.hook.register_commands.get_hookimpls(), key=lambda i: i.plugin_name):
            try:
                impl.function(cli=app)
            except Exception as exc:
                host.fail_registered(impl.plugin_name, exc)
        app._ueb_plugin_commands = True  # type: ignore[attr-defined]
    return app


def _prescan_plugins_dir(argv: list[str]) -> None:
    for i, arg in enumerate(argv):
        if arg == "--plugins-dir" and i + 1 < len(argv):
            os.environ["UEB_PLUGINS_DIR"] = argv[i + 1]
        elif arg.startswith("--plugins-dir="):
            os.environ["UEB_PLUGINS_DIR"] = arg.split("=", 1)[1]


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
    _prescan_plugins_dir(sys.argv[1:])
    try:
        code = get_app()(standalone_mode=False)
    except UebError as exc:
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
