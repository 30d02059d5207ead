"""Profiles: the scale of a run (smoke, quick, paper) as data, read from TOML.

A profile fixes the training protocol, the data subset, the default victim and dataset, and
per-plugin scale parameters (`[plugins.NAME]`, NAME may be a glob). Plugins may ship their own
scale presets (`Plugin.presets[scale]`), which sit under the profile's tables. Code never
branches on a profile's name; everything it changes is a field here.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ueb import defaults
from ueb.errors import ConfigError
from ueb.params import bounded, parse_params

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class TrainingConfig:
    """The victim's training protocol. Defaults are the paper's (Sec. IV-A3, after REM)."""

    iterations: int = bounded(40_000, ge=1)
    batch_size: int = bounded(128, ge=1)
    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    nesterov: bool = False
    # "step": lr x gamma at each milestone (the paper's); "cosine": annealed to zero over the
    # run (milestones and gamma unused), which ends every seed at the same learning rate.
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = bounded((16_000, 32_000), ge=1)
    gamma: float = bounded(0.1, gt=0, le=1)
    crop_padding: int = bounded(4, ge=0)
    flip: bool = True
    eval_every: int = bounded(2_000, ge=0)
    eval_batch_size: int = bounded(1_000, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # channels_last on CPUs as on GPUs: measured x1.6-1.8 per fastnet step on two CPU families
    # (benchmarks/RESULTS.md); it changes summation order, so it is part of every identity.
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = bounded(0.0, ge=0)
    # Intra-op threads per process; 0: one (ueb/numerics.py says why).
    threads: int = bounded(0, ge=0, le=1024)
    # torch.use_deterministic_algorithms (slower on GPUs; CPU kernels already repeat).
    deterministic: bool = False


@dataclass(frozen=True)
class DataConfig:
    """Which part of the dataset a run uses: the first N images per class (None: all)."""

    train_per_class: int | None = bounded(None, ge=1)
    test_per_class: int | None = bounded(None, ge=1)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    # Which of a plugin's scale presets apply ("smoke", "quick", "paper"); default: the name.
    scale: str = ""
    victims: tuple[str, ...] = defaults.PROFILE_VICTIMS
    datasets: tuple[str, ...] = defaults.PROFILE_DATASETS
    seeds: tuple[int, ...] = (0,)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def plugin_params(self, name: str) -> dict[str, Any]:
        """Scale parameters for plugin `name` (exact keys win over globs)."""
        return matching_plugin_settings(self.plugins, name)


def matching_plugin_settings(plugins: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Merge the `[plugins.KEY]` tables whose KEY is `name` or a glob matching it; exact wins."""
    merged: dict[str, Any] = {}
    for key in sorted(plugins, key=lambda k: (k == name, k)):
        if key == name or fnmatch.fnmatchcase(name, key):
            merged.update(plugins[key])
    return merged


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str) -> Profile:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.exists():
        from ueb.params import closest

        hint = closest(name_or_path, available_profiles())
        raise ConfigError(
            f"unknown profile '{name_or_path}'",
            (f"did you mean '{hint}'? " if hint else "")
            + f"(profiles: {', '.join(available_profiles())}, or a .toml path)",
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {path} is not valid TOML: {exc}") from exc
    return profile_from_dict(raw, where=f"profile {path.name}")


def profile_from_dict(raw: dict[str, Any], where: str) -> Profile:
    raw = dict(raw)
    training = parse_params(TrainingConfig, raw.pop("training", {}), where=f"{where} [training]")
    data = parse_params(DataConfig, raw.pop("data", {}), where=f"{where} [data]")
    plugins = raw.pop("plugins", {})
    if not isinstance(plugins, dict) or not all(isinstance(v, dict) for v in plugins.values()):
        raise ConfigError(f"{where}: [plugins] must hold one table per plugin name")
    base = parse_params(_ProfileHead, raw, where=where)
    return Profile(
        name=base.name,
        description=base.description,
        scale=base.scale,
        victims=base.victims,
        datasets=base.datasets,
        seeds=base.seeds,
        training=training,
        data=data,
        plugins={k: dict(v) for k, v in plugins.items()},
    )


@dataclass(frozen=True)
class _ProfileHead:
    name: str
    description: str = ""
    scale: str = ""
    victims: tuple[str, ...] = defaults.PROFILE_VICTIMS
    datasets: tuple[str, ...] = defaults.PROFILE_DATASETS
    seeds: tuple[int, ...] = (0,)
