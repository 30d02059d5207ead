"""Analysis commands (plots, HTML report, baselines/regression checks) added to the `ueb` CLI.

Kept apart from cli.py so the core commands stay small; importing this never imports torch.
"""

from __future__ import annotations

import typer


def add_commands(app: typer.Typer) -> None:
    """Attach the analysis commands (plot, html, check, baseline) to `app`."""
    from ueb.analysis.commands import register

    register(app)
