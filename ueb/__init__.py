"""ueb: benchmark suite and plugin framework for unlearnable examples."""

__version__ = "0.1.0"
