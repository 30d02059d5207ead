"""`ueb new plugin NAME`: a plugin package to start from, whose tests pass as written.

The package has a pyproject with the `ueb` entry point, one plugin of each kind (a sample-wise
noise poisoner, a data-stage blur, a small CNN victim with scale presets, a dataset read from an
.npz file) and tests that register the hooks in a private plugin host and run the conformance
kit (`ueb.testing`) on every plugin. docs/plugins.md explains each piece.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from ueb.errors import ConfigError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
RESERVED = {"ueb", "test", "tests", "torch", "typing"}


def package_name(name: str) -> str:
    """The importable module of distribution `name`: lower case, runs of '-'/'_' as one '_'."""
    return re.sub(r"[-_]+", "_", name).lower()


def write_plugin_package(name: str, parent: str | Path = ".") -> Path:
    """Write the package for distribution `name` into `parent/name`; returns that folder."""
    if not NAME.match(name):
        raise ConfigError(
            f"'{name}' is not a usable package name",
            "use letters, digits, '-' and '_', starting with a letter (e.g. my-method)",
        )
    package = package_name(name)
    if package in RESERVED:
        raise ConfigError(f"'{name}' would shadow the module '{package}'", "choose another name")
    root = Path(parent).expanduser() / name
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} already exists", "choose another name or --dir")
    slug = package.replace("_", "-")
    values = {"dist": name, "package": package, "slug": slug}
    for relative, template in FILES.items():
        path = root / Template(relative).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
    return root


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "ueb plugins: $slug-noise, $slug-blur, $slug-cnn, $slug-npz"
requires-python = ">=3.11"
dependencies = ["ueb"]

# ueb finds the package through this group; the value is the module with the hooks.
[project.entry-points.ueb]
$package = "$package"

[project.optional-dependencies]
test = ["pytest"]

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# $dist

ueb plugins, one of each kind (rename them, then replace the method bodies):

| name | kind | class |
|---|---|---|
| `$slug-noise` | poisoner | `$package.poisoner:Noise` |
| `$slug-blur` | countermeasure (data stage) | `$package.countermeasure:Blur` |
| `$slug-cnn` | victim | `$package.victim:SmallCNN` |
| `$slug-npz` | dataset | `$package.dataset:NpzDataset` |

```bash
pip install -e .
pytest                     # the conformance kit on every plugin
ueb list                   # the names above appear, from $dist
ueb run -p $slug-noise -c vanilla,$slug-blur -v $slug-cnn --profile smoke
```

`$slug-npz` reads `<--data-root>/data.npz` (arrays `train_images`, `train_labels`,
`test_images`, `test_labels` and `classes`; images uint8 (N, C, H, W)). The guide to every
interface is docs/plugins.md in the ueb repository.
"""

HOOKS = '''\
"""Registers the plugins of $dist with ueb (the module the entry point names)."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    register(
        "$slug-noise",
        "$package.poisoner:Noise",
        summary="Sample-wise uniform noise, Linf 8/255",
    )


@hookimpl
def register_countermeasures(register):
    register(
        "$slug-blur",
        "$package.countermeasure:Blur",
        summary="Box blur of the training images",
    )


@hookimpl
def register_victims(register):
    register(
        "$slug-cnn",
        "$package.victim:SmallCNN",
        summary="A small convolutional network",
    )


@hookimpl
def register_datasets(register):
    register(
        "$slug-npz",
        "$package.dataset:NpzDataset",
        summary="Images from an .npz file under --data-root",
    )
'''

POISONER = '''\
"""A poisoner: turns the clean training set into a protected one (labels unchanged)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ueb.interfaces import Budget, Poisoner
from ueb.params import bounded


class Noise(Poisoner):
    """Uniform noise in [-eps, eps], a fresh draw for every image."""

    version = "1"  # bump when the output changes on purpose (it is part of every cache key)

    @dataclass(frozen=True)
    class Params:
        eps: float = bounded(8 / 255, gt=0, le=1)

    def budget(self) -> Budget:
        return Budget("linf", self.params.eps)

    @property
    def sample_wise(self) -> bool:
        return True

    def poison(self, train, ctx):
        gen = torch.Generator().manual_seed(ctx.seed)  # every random draw from the run's seed
        noise = (torch.rand(train.images.shape, generator=gen) * 2 - 1) * self.params.eps
        return (train.float01() + noise).clamp(0, 1)

    def report(self) -> dict[str, object]:
        return {"eps_levels": round(self.params.eps * 255, 3)}
'''

COUNTERMEASURE = '''\
"""A data-stage countermeasure: transforms the (protected) training set before training."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from ueb.interfaces import Countermeasure
from ueb.params import bounded


class Blur(Countermeasure):
    """A k x k box blur of every training image."""

    version = "1"
    stage = "data"  # or "train" (override augment/loss) or "protocol" (override fit)

    @dataclass(frozen=True)
    class Params:
        kernel: int = bounded(3, ge=1)

        def __post_init__(self) -> None:
            if self.kernel < 1 or self.kernel % 2 == 0:
                raise ValueError(f"kernel must be a positive odd number, got {self.kernel}")

    def transform_train_set(self, train, ctx):
        k = self.params.kernel
        x = F.avg_pool2d(train.float01(), k, stride=1, padding=k // 2, count_include_pad=False)
        return train.with_images(x.clamp(0, 1), countermeasure=self.name)
'''

VICTIM = '''\
"""A victim: the architecture the unauthorised party trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from ueb.interfaces import Victim
from ueb.nn import Classifier
from ueb.params import bounded


class SmallCNN(Victim):
    """Two strided convolutions and global pooling; `width` channels in the first."""

    version = "1"
    # The plugin's own settings per scale, under the profile's [plugins.NAME] and --param.
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"width": 8}, "quick": {"width": 16}}

    @dataclass(frozen=True)
    class Params:
        width: int = bounded(32, ge=1)

    def build(self, num_classes, image_size, in_channels=3):
        w = self.params.width
        backbone = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # the backbone returns flat (N, feature_dim) features
        )
        return Classifier(backbone, feature_dim=2 * w, num_classes=num_classes)
'''

DATASET = '''\
"""A dataset: reads local files under --data-root (ueb never downloads)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ueb.errors import DataError
from ueb.imageset import ImageSet
from ueb.interfaces import Dataset, Splits


class NpzDataset(Dataset):
    """train_images/test_images uint8 (N, C, H, W), train_labels/test_labels, classes."""

    version = "1"

    @dataclass(frozen=True)
    class Params:
        file: str = "data.npz"

    def load(self, root):
        if root is None:
            raise DataError(
                f"{self.name} needs --data-root", f"point it at the folder with {self.params.file}"
            )
        path = root / self.params.file
        if not path.is_file():
            raise DataError(f"{path} does not exist", f"write {self.params.file} into --data-root")
        with np.load(path) as f:
            classes = tuple(str(c) for c in f["classes"])
            parts = [
                ImageSet(
                    torch.from_numpy(f[f"{s}_images"]),
                    torch.from_numpy(f[f"{s}_labels"]),
                    classes,
                    self.name,
                )
                for s in ("train", "test")
            ]
        return Splits(*parts, source=str(path))
'''

TESTS = '''\
"""The plugins of $dist: registered under their names, and conforming to ueb's contract."""

import numpy as np
import pytest
from ueb.plugins import PluginHost
from ueb.registry import Registry
from ueb.testing import (
    check_countermeasure,
    check_dataset,
    check_poisoner,
    check_victim,
    make_imageset,
)

import $package
from $package.countermeasure import Blur
from $package.dataset import NpzDataset
from $package.poisoner import Noise
from $package.victim import SmallCNN


def test_the_hooks_register_every_plugin():
    host = PluginHost(entry_points=False)  # a private host: only this package's hooks
    host.register(
        $package,
        name="$package",
        distribution="$dist",
    )
    registry = Registry(host)
    for kind, name, cls in [
        ("poisoner", "$slug-noise", Noise),
        ("countermeasure", "$slug-blur", Blur),
        ("victim", "$slug-cnn", SmallCNN),
        ("dataset", "$slug-npz", NpzDataset),
    ]:
        assert isinstance(registry.create(kind, name), cls)


def test_poisoner(tmp_path):
    check_poisoner(Noise, workdir=tmp_path)


def test_countermeasure(tmp_path):
    check_countermeasure(Blur, params={"kernel": 5}, workdir=tmp_path)
    with pytest.raises(AssertionError, match="kernel must be a positive odd number"):
        check_countermeasure(Blur, params={"kernel": 2}, workdir=tmp_path)


def test_victim():
    check_victim(SmallCNN, params={"width": 4})


def test_dataset(tmp_path):
    train, test = make_imageset(per_class=4), make_imageset(per_class=2, seed=1)
    arrays = {
        "train_images": train.images,
        "train_labels": train.labels,
        "test_images": test.images,
        "test_labels": test.labels,
    }
    np.savez(
        tmp_path / "data.npz",
        classes=np.array(train.classes),
        **{k: v.numpy() for k, v in arrays.items()},
    )
    check_dataset(NpzDataset, root=tmp_path)
'''

FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "$package/__init__.py": HOOKS,
    "$package/poisoner.py": POISONER,
    "$package/countermeasure.py": COUNTERMEASURE,
    "$package/victim.py": VICTIM,
    "$package/dataset.py": DATASET,
    "tests/test_$package.py": TESTS,
}
