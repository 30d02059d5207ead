"""One output object: rich tables for a person, JSON for a machine, errors on stderr.

Text that comes from outside ueb's own strings (error messages, plugin summaries, names) is
printed literally: never as rich markup, never with emoji codes (`module:Ghost:` stays text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ueb.plan import Plan


class Output:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.console = Console(emoji=False, highlight=False)
        self.err = Console(stderr=True, emoji=False, highlight=False)

    # On a terminal, lines wrap at spaces (a terminal's own wrap cuts numbers and words in two);
    # into a pipe or a file each message stays one line, whole, for grep and logs.
    def info(self, message: str) -> None:
        if not self.json_mode:
            self.console.print(message, markup=False, soft_wrap=not self.console.is_terminal)

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, soft_wrap=not self.console.is_terminal)

    def warn(self, line: str) -> None:
        """A failure the user must see, also under --quiet (stderr)."""
        line = line.removeprefix("warning: ")
        self.err.print(
            f"[bold yellow]warning:[/bold yellow] {escape(line)}",
            soft_wrap=not self.err.is_terminal,
        )

    def error(self, line: str) -> None:
        self.err.print(
            f"[bold red]error:[/bold red] {escape(line)}", soft_wrap=not self.err.is_terminal
        )

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

    def report_table(self, table: Any, plain: str) -> None:
        """A result table laid out for this terminal's width (markdown off a terminal)."""
        from ueb.report import to_rich

        if not self.console.is_terminal:
            self.raw(plain)
            return
        try:
            rendered = to_rich(table, width=self.console.width)  # type: ignore[call-arg]
        except TypeError:  # a renderer without width support
            rendered = to_rich(table)
        for part in rendered if isinstance(rendered, list) else [rendered]:
            self.console.print(part)

    def rows(
        self,
        rows: list[dict[str, Any]],
        columns: list[str],
        title: str = "",
        wrap: str | None = None,
    ) -> None:
        """A table of plain values. In a narrow terminal every column but `wrap` keeps its full
        width and `wrap` takes what is left (at least a readable minimum)."""
        if self.json_mode:
            self.json(rows)
            return
        present = [c for c in columns if any(c in r for r in rows)]
        t = Table(title=title, expand=False)
        for c in present:
            if c == wrap:
                t.add_column(c, overflow="fold", ratio=1, min_width=12)
            else:
                t.add_column(c, no_wrap=True, overflow="fold")
        for r in rows:
            t.add_row(*(escape(str(r.get(c, ""))) for c in present))
        self.console.print(t)

    def introduce(
        self, plan: Plan, run_dir: Path, preview: dict[str, int] | None, brief: bool = False
    ) -> None:
        """What will run, in a few lines (the full configuration: `--dry-run` or `ueb show --config`)."""
        if self.json_mode:
            return
        lines = [
            f"run directory  {run_dir}",
            f"profile        {plan.profile.name}  ({plan.profile.training.iterations} steps, batch {plan.profile.training.batch_size})",
            f"poisoners      {_names(plan.poisoners)}",
            f"countermeas.   {_names(plan.countermeasures)}",
            f"victims        {_names(plan.victims)}   datasets {_names(plan.datasets)}   seeds {_names([str(s) for s in plan.seeds])}",
        ]
        if plan.config.poison_seeds:
            lines.append(
                f"poison seeds   {_names([str(s) for s in plan.config.poison_seeds])} (nested: each victim seed trains on each)"
            )
        lines.append(f"numerics       {plan.numerics.short()}")
        if any(f < 1.0 for f in plan.fractions):
            lines.append(f"poison fraction {', '.join(f'{f:g}' for f in plan.fractions)}")
        if plan.user_params:
            lines.append(
                "parameters     "
                + "; ".join(
                    f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items())
                    for k, v in plan.user_params.items()
                )
            )
        if preview is not None:
            lines.append(
                f"cells          {preview['cells']}: {preview['done']} done here, {preview['reusable']} reusable from other runs, "
                f"{preview['todo']} to compute; poisons {preview['poisons_cached']} cached, {preview['poisons_todo']} to compute; "
                + _execution(plan)
            )
        if brief:
            lines = [lines[0], lines[-1]]
        for line in lines:
            self.console.print(line, markup=False, soft_wrap=False, overflow="fold")


def _execution(plan: Plan) -> str:
    config = plan.config
    if config.executor == "ray":
        return f"Ray, {config.workers} tasks at once"
    return "in this process" if config.workers == 1 else f"{config.workers} worker processes"


def _names(names: Any, limit: int = 8) -> str:
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" ... ({len(names)} in all)"
