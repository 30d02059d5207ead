"""What a Plan holds: a Spec per selected plugin, a Cell per matrix cell, and the Plan itself
with the keys and descriptions derived from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ueb import identity
from ueb.config import RunConfig
from ueb.numerics import Numerics
from ueb.params import as_dict
from ueb.profile import Profile


@dataclass(frozen=True)
class Spec:
    """One plugin as the run uses it: what it is, its typed parameters, what it requires."""

    kind: str
    name: str  # the name shown (a grid variant's name included)
    entry: str  # the registered name that builds it (a variant's base)
    target: str  # module:Class
    version: str
    params: Mapping[str, Any]
    requires: tuple[Spec, ...] = ()
    fingerprint: str = ""  # datasets: content hash of the subsets used
    inputs: Mapping[str, Any] = field(default_factory=dict)  # Plugin.input_identity()

    @property
    def digest(self) -> str:
        return identity.digest(self.identity())

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "version": self.version,
            "params": dict(self.params),
            "requires": [r.identity() for r in self.requires],
            "fingerprint": self.fingerprint,
            "inputs": dict(self.inputs),
        }

    def describe(self) -> dict[str, Any]:
        """What is printed and stored: the identity plus the names, a requirement's included
        (`ueb.plan_specs.spec_from_description` reads it back)."""
        return {
            "name": self.name,
            "entry": self.entry,
            **self.identity(),
            "requires": [r.describe() for r in self.requires],
        }

    def named_identity(self) -> dict[str, Any]:
        """The identity and this spec's own names (what a run's id digests)."""
        return {"name": self.name, "entry": self.entry, **self.identity()}


@dataclass(frozen=True)
class Cell:
    ordinal: int
    dataset: str
    poisoner: str
    seed: int
    countermeasure: str
    victim: str
    fraction: float
    id: str
    config_digest: str
    poison_key: str
    poison_seed: int = -1  # -1: the cell's own seed (the coupled design)

    @property
    def poison_seed_used(self) -> int:
        return self.seed if self.poison_seed < 0 else self.poison_seed

    @property
    def group(self) -> tuple[str, str, int]:
        """Cells of one group share one poison."""
        return (self.dataset, self.poisoner, self.poison_seed_used)


@dataclass(frozen=True)
class Plan:
    """What a run will compute. Picklable: workers receive it and build plugins from its specs."""

    config: RunConfig
    profile: Profile
    specs: Mapping[tuple[str, str], Spec]
    datasets: tuple[str, ...]
    poisoners: tuple[str, ...]
    countermeasures: tuple[str, ...]
    victims: tuple[str, ...]
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    cells: tuple[Cell, ...]
    numerics: Numerics
    user_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The registered names of the roles core compares against (ueb.roles); None: not installed.
    reference: str | None = None
    baseline: str | None = None

    @property
    def training(self) -> dict[str, Any]:
        return as_dict(self.profile.training)

    @property
    def computation(self) -> dict[str, Any]:
        """The training protocol and the numerics: what every poison and cell id hashes."""
        return {"training": self.training, "numerics": self.numerics.identity()}

    def spec(self, kind: str, name: str) -> Spec:
        return self.specs[(kind, name)]

    def poison_key(self, dataset: str, poisoner: str, seed: int) -> str:
        return identity.poison_identity(
            self.spec("poisoner", poisoner).digest,
            self.spec("dataset", dataset).fingerprint.split("/")[0],
            seed,
            self.computation,
        )

    def find(
        self,
        dataset: str,
        poisoner: str,
        seed: int,
        countermeasure: str,
        victim: str,
        fraction: float = 1.0,
    ) -> Cell | None:
        for c in self.cells:
            if (c.dataset, c.poisoner, c.seed, c.countermeasure, c.victim, c.fraction) == (
                dataset,
                poisoner,
                seed,
                countermeasure,
                victim,
                fraction,
            ):
                return c
        return None

    def describe(self) -> dict[str, Any]:
        """The full resolved configuration, stored with the run and hashed into its id."""
        return {
            "profile": self.profile.name,
            "datasets": list(self.datasets),
            "poisoners": list(self.poisoners),
            "countermeasures": list(self.countermeasures),
            "victims": list(self.victims),
            "seeds": list(self.seeds),
            "poison_seeds": list(self.config.poison_seeds),
            "poison_fractions": list(self.fractions),
            "training": self.training,
            "numerics": self.numerics.identity(),
            "data": as_dict(self.profile.data),
            "specs": {f"{k}:{n}": s.describe() for (k, n), s in self.specs.items()},
            # what the user wrote, kept for reading old runs' layout (analysis reads these)
            "params": {k: dict(v) for k, v in self.user_params.items()},
            "grid": self.config.grid,
            "profile_plugins": self.profile.plugins,
            "device": self.config.device,
            "data_root": self.config.data_root,
        }

    def run_id(self) -> str:
        ident = {
            k: v
            for k, v in self.describe().items()
            if k not in ("params", "grid", "profile_plugins", "device", "data_root")
        }
        ident["specs"] = {f"{k}:{n}": s.named_identity() for (k, n), s in self.specs.items()}
        return f"{self.profile.name}-{identity.digest(ident)[:10]}"
