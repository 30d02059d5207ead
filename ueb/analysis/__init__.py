"""Analysis of finished runs: plots, a self-contained HTML report, and regression on numbers.

The CLI commands live in `ueb.analysis.commands` (imported by `ueb.cli`); nothing here imports
torch or matplotlib at import time.
"""
