"""The built-in names used when a run or a profile names none: the one place core names a
plugin. Everything else asks for a role (ueb.roles)."""

from __future__ import annotations

# `ueb run` with no -p / -c: the flagship method under plain training.
RUN_POISONERS: tuple[str, ...] = ("deephiding",)
RUN_COUNTERMEASURES: tuple[str, ...] = ("vanilla",)
# A profile that names no victim or dataset: the paper's (Sec. IV-A).
PROFILE_VICTIMS: tuple[str, ...] = ("resnet18",)
PROFILE_DATASETS: tuple[str, ...] = ("cifar10",)
