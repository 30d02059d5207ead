"""The training protocol and RunContext the conformance kit runs plugins with."""

from __future__ import annotations

import tempfile
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if typing.TYPE_CHECKING:
    from ueb.interfaces import Plugin, RunContext
    from ueb.profile import TrainingConfig
from ueb.testing.declarations import _who

# --------------------------------------------------------------------------- contexts


def tiny_training() -> TrainingConfig:
    """A training protocol of four steps: what the conformance kit trains with."""
    from ueb.profile import TrainingConfig

    return TrainingConfig(
        iterations=4,
        batch_size=16,
        lr=0.05,
        milestones=(),
        eval_every=2,
        eval_batch_size=64,
        precision="fp32",
        channels_last=False,
    )


def make_run_context(
    workdir: str | Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    training: TrainingConfig | None = None,
    data_root: str | Path | None = None,
    owner: Plugin | None = None,
) -> RunContext:
    """A RunContext as a run builds one, with its artifact store under `workdir`.

    With `owner`, `ctx.plugin` builds only what `owner.requires()` declares (as in a run; an
    undeclared request raises AssertionError); without it, any registered plugin.
    """
    from ueb.artifacts import ArtifactStore
    from ueb.interfaces import RunContext
    from ueb.progress import silent
    from ueb.registry import get_registry, registry_provider

    training = training or tiny_training()
    registry = get_registry()
    provider = registry_provider(registry) if owner is None else _declared_provider(owner, training)
    return RunContext(
        seed=seed,
        device=device,
        artifacts=ArtifactStore(Path(workdir) / "artifacts"),
        progress=silent(),
        training=training,
        data_root=Path(data_root) if data_root is not None else None,
        provider=provider,
    )


def _declared_provider(owner: Plugin, training: TrainingConfig) -> Any:
    """ctx.plugin for `owner`: a plugin matches a requirement when kind, name and its typed,
    bound parameters agree (what a run compares); it comes with those bound parameters."""
    from ueb.params import as_dict
    from ueb.plan_specs import SpecResolver, instantiate
    from ueb.profile import Profile
    from ueb.registry import get_registry

    registry = get_registry()
    who = _who(owner)
    resolver = SpecResolver(registry, Profile(name="conformance-check", training=training))

    def bound(kind: str, name: str, params: Mapping[str, Any] | None) -> Any:
        return instantiate(registry, resolver.spec_with(kind, name, name, dict(params or {})))

    declared = [
        (r.kind, r.name, as_dict(bound(r.kind, r.name, r.params).params)) for r in owner.requires()
    ]

    def provide(kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
        listed = ", ".join(f"{k} '{n}' {p}" for k, n, p in declared) or "nothing"
        undeclared = AssertionError(
            f"{who} asked ctx.plugin for {kind} '{name}' with {dict(params or {})}, but requires() "
            f"declares {listed}; return a Requirement(kind, name, params) for every plugin it "
            "builds (its spec enters the cache keys)"
        )
        if not any((k, n) == (kind, name) for k, n, _ in declared):
            raise undeclared
        instance = bound(kind, name, params)
        if (kind, name, as_dict(instance.params)) not in declared:
            raise undeclared
        return instance

    return provide


@contextmanager
def _workdir(workdir: str | Path | None) -> Iterator[Path]:
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ueb-check-") as tmp:
        yield Path(tmp)


def _seed(seed: int) -> None:
    from ueb.worker import seed_everything

    seed_everything(seed)
