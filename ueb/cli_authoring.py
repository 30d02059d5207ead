"""Commands for plugin authors (`ueb new plugin NAME`), added to the `ueb` CLI.

Kept apart from cli.py like the analysis commands; importing this never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def add_commands(app: typer.Typer) -> None:
    """Attach `ueb new ...` to `app`."""
    new = typer.Typer(
        help="Start a new piece of work from a template.",
        no_args_is_help=True,
        add_completion=False,
    )

    @new.command("plugin")
    def plugin(
        name: Annotated[
            str, typer.Argument(help="Distribution name, e.g. my-method (also names the folder).")
        ],
        folder: Annotated[
            Path, typer.Option("--dir", help="Where to create the package folder.")
        ] = Path("."),
    ) -> None:
        """A plugin package with one plugin of each kind, an entry point, and passing tests."""
        from ueb.output import Output
        from ueb.scaffold import package_name, write_plugin_package

        root = write_plugin_package(name, folder)
        out = Output()
        out.info(f"wrote {root} (module {package_name(name)}); next:")
        out.info(f"  cd {root} && pip install -e . && pytest")
        out.info("  ueb list   # shows its plugins; docs/plugins.md explains every interface")

    app.add_typer(new, name="new")
