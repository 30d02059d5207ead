"""ueb: benchmark suite and plugin framework for unlearnable examples."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    """`ueb.load` (ueb.frame.load) on first use: `import ueb` imports neither pandas nor torch."""
    if name == "load":
        from ueb.frame import load

        return load
    raise AttributeError(f"module 'ueb' has no attribute {name!r}")
