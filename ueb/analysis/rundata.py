"""A finished run, read back for analysis: its cells, manifest, clean data, poisons and saved victims.

Everything is rebuilt from what the run stored: the clean training subset from the manifest's
configuration (the registry's dataset with the profile's `train_per_class`, exactly as
`MatrixRunner.load_dataset` does), the poisoned images from the poison cache
(`<cache_root>/poisons/<key>/images.npy`), and trained victims from `<run_dir>/models/<cell>.pt`.
Anything absent is reported as a one-line reason (`Missing`), never raised, so a figure that
cannot be drawn is skipped while the others are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ueb.store import CellRecord, Store

if TYPE_CHECKING:
    import torch

    from ueb.imageset import ImageSet
    from ueb.plan_model import Spec
    from ueb.registry import Registry


class Missing(Exception):
    """An input a figure needs is not there (no saved model, poison not in the cache, no data)."""


@dataclass
class RunData:
    run_dir: Path
    records: list[CellRecord]
    manifest: dict[str, Any]
    registry: Registry | None = None
    _clean: dict[str, ImageSet | Missing] = field(default_factory=dict)
    state_line: str = ""  # '' for a complete run, else what is missing or running

    @classmethod
    def open(cls, run_dir: Path, registry: Registry | None = None) -> RunData:
        store = Store.open_existing(Path(run_dir))
        try:
            data = cls(Path(run_dir), store.records(), store.manifest(), registry)
            data.state_line = store.state().line()
            return data
        finally:
            store.close()

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def cache_root(self) -> Path | None:
        root = self.manifest.get("cache_root")
        return Path(root) if root else None

    @property
    def reference(self) -> str | None:
        """The run's reference (clean) poisoner: as recorded, else the registered role's."""
        from ueb.roles import reference_poisoner

        recorded = self.config.get("reference")
        return recorded if isinstance(recorded, str) else reference_poisoner(self._registry())

    @property
    def baseline(self) -> str | None:
        """The run's baseline countermeasure (plain training): as recorded, else the role's."""
        from ueb.roles import baseline_countermeasure

        recorded = self.config.get("baseline")
        return recorded if isinstance(recorded, str) else baseline_countermeasure(self._registry())

    def _registry(self) -> Registry:
        if self.registry is None:
            from ueb.registry import get_registry

            self.registry = get_registry()
        return self.registry

    def spec(self, kind: str, name: str) -> Spec:
        """The typed spec the run resolved for plugin `name` (stored in its manifest). A run
        stored before the manifest held specs is resolved again, from its profile and params,
        through the same resolver."""
        from ueb.plan_specs import SpecResolver, spec_from_description

        stored = (self.config.get("specs") or {}).get(f"{kind}:{name}")
        if stored:
            return spec_from_description(stored)
        from dataclasses import replace

        from ueb.profile import load_profile

        profile = replace(
            load_profile(str(self.config.get("profile") or "quick")),
            plugins=self.config.get("profile_plugins") or {},
        )
        resolver = SpecResolver(self._registry(), profile, self.config.get("params") or {})
        return resolver.spec(kind, name)

    def ok(self) -> list[CellRecord]:
        return [r for r in self.records if r.status == "ok"]

    def ordered(self, field_name: str) -> list[str]:
        """Names along one axis in the run's configured order (then any others seen)."""
        seen = list(dict.fromkeys(getattr(r, field_name) for r in self.records))
        preferred = [n for n in self.config.get(field_name + "s", []) if n in seen]
        return preferred + [n for n in seen if n not in preferred]

    # -- data ------------------------------------------------------------------------------

    def clean_train(self, dataset: str) -> ImageSet:
        """The clean training subset the run poisoned (raises Missing when it cannot be loaded)."""
        if dataset not in self._clean:
            self._clean[dataset] = self._load_clean(dataset)
        value = self._clean[dataset]
        if isinstance(value, Missing):
            raise value
        return value

    def _load_clean(self, dataset: str) -> ImageSet | Missing:
        from ueb.errors import UebError
        from ueb.plan_specs import instantiate

        root = self.config.get("data_root")
        try:
            ds = instantiate(self._registry(), self.spec("dataset", dataset))
            splits = ds.load(Path(root) if root else None)
        except UebError as exc:
            return Missing(f"dataset {dataset} cannot be loaded: {exc.line()}")
        per_class = (self.config.get("data") or {}).get("train_per_class")
        return splits.train.first_per_class(per_class)

    def poison_images(self, record: CellRecord) -> torch.Tensor:
        """The poisoned uint8 training images of `record`'s poisoner, from the poison cache."""
        import numpy as np
        import torch

        key = record.poison_facts.get("key")
        if not key:
            raise Missing(f"cell {record.cell_id[:10]} records no poison key")
        if self.cache_root is None:
            raise Missing("the run's manifest names no cache_root")
        path = self.cache_root / "poisons" / str(key) / "images.npy"
        if not path.exists():
            raise Missing(
                f"poison of {record.poisoner} on {record.dataset} is not in the cache ({path})"
            )
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise Missing(f"poison file {path} is unreadable ({exc})") from exc

    def poisoned_pair(self, record: CellRecord) -> tuple[ImageSet, torch.Tensor]:
        """(clean training subset, poisoned uint8 images of the same samples)."""
        poisoned = self.poison_images(record)  # the cheap check first
        clean = self.clean_train(record.dataset)
        if tuple(poisoned.shape) != tuple(clean.images.shape):
            raise Missing(
                f"poison of {record.poisoner} has shape {tuple(poisoned.shape)} but the rebuilt clean set "
                f"{tuple(clean.images.shape)} (dataset files changed since the run?)"
            )
        return clean, poisoned

    # -- models ----------------------------------------------------------------------------

    def model_path(self, record: CellRecord) -> Path:
        return self.run_dir / "models" / f"{record.cell_id}.pt"

    def has_model(self, record: CellRecord) -> bool:
        return self.model_path(record).exists()

    def load_model(
        self, record: CellRecord, clean: ImageSet, device: str = "cpu"
    ) -> torch.nn.Module:
        """The trained victim of `record`, rebuilt from the registry and its saved state_dict."""
        import torch

        from ueb.errors import UebError

        path = self.model_path(record)
        if not path.exists():
            raise Missing(
                f"no saved model for {record.poisoner} x {record.countermeasure} x {record.victim} ({path.name})"
            )
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            # The record holds every resolved parameter; the file only the run's overrides, which
            # rebuild a different net once the plugin's defaults change.
            params = record.victim_params or saved.get("params") or {}
            victim = self._registry().create("victim", saved.get("victim", record.victim), params)
            model = victim.build(clean.num_classes, clean.image_size, clean.channels)
            model.load_state_dict(saved["state_dict"])
        except (OSError, RuntimeError, KeyError, UebError) as exc:
            now = self._registry().get("victim", record.victim).load_class().version
            why = (
                f"victim {record.victim} is v{now} now, v{record.victim_version} in the run"
                if now != record.victim_version
                else "the victim's code changed since the run?"
            )
            first = str(exc).strip().splitlines()[0][:160]
            raise Missing(f"saved model {path.name} cannot be restored ({first} {why})") from exc
        return model.to(device).eval()
