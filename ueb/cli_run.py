"""`ueb run`: the matrix from flags, a matrix file and a profile, then its tables.

Importing this never imports torch: everything heavy is imported inside the command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ueb.cli_app import _note_state, _registry, app
from ueb.errors import ConfigError
from ueb.output import Output

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
        typer.Option(
            "--save-models", help="Keep trained victims: none | baseline (plain training) | all."
        ),
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
