"""Benchmarks: speed targets, kept out of the test suite (run with --benchmark-enable).

`pytest benchmarks/ --benchmark-enable` collects the `bench_*.py` files here (pytest's own
pattern only picks up `test_*.py`). Only ueb's own plugins load, as in tests/.
"""

from __future__ import annotations

import os

import pytest

os.environ["UEB_PLUGINS"] = "ueb"


def pytest_collect_file(parent, file_path):
    # Files named on the command line are collected by pytest itself; do not add them twice.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
