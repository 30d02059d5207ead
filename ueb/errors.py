"""Errors a user sees as one line: what went wrong, then how to fix it."""

from __future__ import annotations


class UebError(Exception):
    """An error caused by input or environment, reported as a single line (no traceback)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.problem} ({self.fix})" if self.fix else self.problem


class ConfigError(UebError):
    """Unknown names, wrong types or bad values in the configuration."""


class DataError(UebError):
    """A missing, unreadable or malformed dataset."""


class PluginError(UebError):
    """A plugin failed to load, collided with another, or raised."""


class IntegrityError(UebError):
    """A poisoned set broke its declared contract (shape, range, budget)."""


class DiskFullError(UebError):
    """The disk filled up while ueb was writing; the run stops (finished work is kept)."""
