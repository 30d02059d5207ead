"""The `ueb` Typer app, its global options and the helpers its commands share; the command
modules add their commands to it.

Importing this never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ueb.output import Output

app = typer.Typer(
    name="ueb",
    help="Benchmark unlearnable examples: which protection survives which countermeasure, on which architecture.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


def _note_state(table: Any, store: Any, out: Output | None = None) -> None:
    """A table of an unfinished run says so first, in every format that has notes, and on
    stderr (CSV has no notes)."""
    line = store.state().line()
    if line:
        table.notes.insert(0, line)
        if out is not None:
            out.warn(line)
