"""The `ueb` command line (typer + rich).

Importing this module, `ueb --help` and `ueb list` never import torch: plugins register
"module:Class" strings, and everything heavy is imported inside command bodies.

The app is `ueb.cli_app.app`; each group of commands is its own module and adds itself to it
on import, in the order `ueb --help` lists them: `cli_run` (run), `cli_results` (report, show,
export), `cli_listing` (list, plugins, profiles), then the analysis and authoring commands.
This module is the entry point.
"""

from __future__ import annotations

import os
import sys

import typer

from ueb.cli_app import app
from ueb.errors import UebError
from ueb.output import Output

# --------------------------------------------------------------------------- commands

# Each module adds its commands to `app` when imported: this order is the order of `ueb --help`.
# isort: off
from ueb import cli_run  # noqa: F401  (run)
from ueb import cli_results  # noqa: F401  (report, show, export)
from ueb import cli_listing  # noqa: F401  (list, plugins, profiles)

# isort: on
from ueb import cli_analysis  # (analysis commands: plot, check, baseline)

cli_analysis.add_commands(app)

from ueb import cli_authoring  # noqa: E402  (plugin authors: ueb new plugin)

cli_authoring.add_commands(app)

from ueb.cli_run import _write_reports as _write_reports  # noqa: E402  (importable from here)

# --------------------------------------------------------------------------- entry point


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
