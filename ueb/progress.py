"""Progress display for long work (rich), with a silent variant for tests and pipes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Task:
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress = progress
        self._id = task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)

    def update(self, **fields: Any) -> None:
        """Update the description (`description=`) or shown fields (e.g. `loss=0.12`)."""
        if self._progress is None:
            return
        desc = fields.pop("description", None)
        kwargs: dict[str, Any] = {}
        if desc is not None:
            kwargs["description"] = desc
        if isinstance(fields.get("info"), str):  # a ready-made line (the matrix's ETA)
            kwargs["info"] = fields.pop("info")
        if fields:
            kwargs["info"] = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._id, **kwargs)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """`with progress.task("training", total=n) as t: t.advance()`; nests freely."""

    def __init__(self, enabled: bool = True, console: Any = None) -> None:
        self.enabled = enabled
        self._rich: Any = None
        self._console = console
        self._depth = 0

    def _ensure(self) -> Any:
        if self._rich is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self._console,
                transient=False,
            )
        return self._rich

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        if not self.enabled:
            yield Task(None, None)
            return
        rich = self._ensure()
        if self._depth == 0:
            rich.start()
        self._depth += 1
        task_id = rich.add_task(description, total=total, info="")
        try:
            yield Task(rich, task_id)
        finally:
            self._depth -= 1
            if self._depth > 0:
                rich.remove_task(task_id)  # inner tasks vanish when done; the outer bar stays
            else:
                rich.stop()
                self._rich = None

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(message)
        else:
            from rich.console import Console

            (self._console or Console(stderr=True)).print(message)


def silent() -> Progress:
    return Progress(enabled=False)
