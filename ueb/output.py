"""One output object: rich tables for a person, JSON for a machine, errors on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


class Output:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.console = Console()
        self.err = Console(stderr=True)

    def info(self, message: str) -> None:
        if not self.json_mode:
            self.console.print(message)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def error(self, line: str) -> None:
        self.err.print(f"[bold red]error:[/bold red] {line}", highlight=False, soft_wrap=True)

    def raw(self, text: str) -> None:
        self.console.out(text, highlight=False, end="")

    def json(self, obj: Any) -> None:
        self.console.out(json.dumps(obj, indent=2, default=str), highlight=False)

    def table(self, table: Any, plain: str | None = None) -> None:
        """A rich table on a terminal; `plain` (e.g. markdown) when output goes to a file or pipe,
        where rich would squeeze a wide table into 80 columns."""
        if plain is not None and not self.console.is_terminal:
            self.raw(plain)
        else:
            self.console.print(table)

    def rows(self, rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
        if self.json_mode:
            self.json(rows)
            return
        t = Table(title=title)
        present = [c for c in columns if any(c in r for r in rows)]
        for c in present:
            t.add_column(c)
        for r in rows:
            t.add_row(*(str(r.get(c, "")) for c in present))
        self.console.print(t)

    def config(self, described: dict[str, Any], run_dir: Path) -> None:
        if self.json_mode:
            return
        self.console.print(f"[bold]run directory[/bold] {run_dir}")
        brief = {k: described[k] for k in ("profile", "datasets", "poisoners", "countermeasures", "victims", "seeds", "params", "device")}
        self.console.print_json(json.dumps(brief, default=str))
