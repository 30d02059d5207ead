"""Test isolation: only ueb's own plugins load, and caches live in a temporary folder."""

from __future__ import annotations

import os

import pytest

os.environ["UEB_PLUGINS"] = "ueb"  # installed third-party plugins must not change results
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UEB_CACHE", str(tmp_path_factory.getbasetemp() / "ueb-cache"))
    yield


@pytest.fixture
def tiny_set():
    from ueb.testing import make_imageset

    return make_imageset(per_class=8, num_classes=4)


@pytest.fixture
def run_context(tmp_path):
    """A RunContext at smoke scale on the CPU, with a private artifact store."""
    from ueb.artifacts import ArtifactStore
    from ueb.interfaces import RunContext
    from ueb.profile import load_profile
    from ueb.progress import silent
    from ueb.registry import get_registry, registry_provider

    return RunContext(
        seed=0,
        device="cpu",
        training=load_profile("smoke").training,
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        progress=silent(),
        provider=registry_provider(get_registry()),
    )
