"""Test helpers for ueb and its plugins: small data, dataset files, and the conformance kit.

Data: `make_imageset` (structured synthetic images), `write_cifar_archive`,
`write_cifar100_archive` and `write_image_folders` (files in the layouts the built-in datasets
read), `tiny_classifier` (a victim-shaped model in a few thousand parameters).

Conformance kit: `check_poisoner`, `check_countermeasure`, `check_victim` and `check_dataset`
run one plugin through the promises the framework relies on, on small data, the way a run
calls it (parameters typed, `bind` and `preflight` called, a RunContext whose `plugin` builds
only what `requires()` declares). A broken promise raises AssertionError naming the plugin,
the promise and the fix. A plugin's own tests call them:

    from ueb.testing import check_poisoner

    def test_my_poisoner_keeps_the_contract(tmp_path):
        check_poisoner(MyPoisoner, params={"steps": 2}, workdir=tmp_path)
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ueb.imageset import ImageSet
from ueb.params import bounds_of

if typing.TYPE_CHECKING:
    from torch import nn

    from ueb.interfaces import Plugin, RunContext, Splits, TrainResult
    from ueb.profile import TrainingConfig

# --------------------------------------------------------------------------- small data


def make_imageset(
    per_class: int = 8,
    num_classes: int = 4,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
    name: str = "synthetic",
) -> ImageSet:
    """Each class: a bright square at a class-specific place and tint, on textured background.

    Learnable in a few steps (so training tests can assert accuracy moves) yet every image
    differs (so sample-wise checks are meaningful).
    """
    gen = torch.Generator().manual_seed(seed)
    n = per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = torch.rand(n, channels, size, size, generator=gen) * 0.35 + 0.1
    side = max(4, size // 4)
    for i in range(n):
        c = int(labels[i])
        row = (c * 7) % (size - side)
        col = (c * 13) % (size - side)
        jitter = torch.randint(-1, 2, (2,), generator=gen)
        r0 = int(max(0, min(size - side, row + int(jitter[0]))))
        c0 = int(max(0, min(size - side, col + int(jitter[1]))))
        tint = torch.linspace(0.5, 1.0, channels).roll(c % channels)
        x[i, :, r0 : r0 + side, c0 : c0 + side] = tint[:, None, None]
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, tuple(f"class{c}" for c in range(num_classes)), name)


def write_cifar_archive(
    folder, per_class: int = 10, num_classes: int = 10, test_per_class: int = 5, seed: int = 0
):
    """Write a small archive in the official CIFAR-10 "python version" format; returns its path.

    Same member names, pickle layout (bytes keys, uint8 rows of 3072) and compression as
    `cifar-10-python.tar.gz`, so the real loader is exercised end to end.
    """
    import numpy as np

    train = make_imageset(per_class * 5, num_classes, 32, 3, seed)
    test = make_imageset(test_per_class, num_classes, 32, 3, seed + 1)
    rows = train.images.reshape(len(train), -1).numpy()
    labels = train.labels.numpy()
    perm = np.random.default_rng(seed).permutation(len(rows))
    rows, labels = rows[perm], labels[perm]
    members = {}
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 5), start=1):
        members[f"data_batch_{i}"] = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": labels[part].tolist(),
            b"data": rows[part],
            b"filenames": [b"x.png"] * len(part),
        }
    members["test_batch"] = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": test.labels.tolist(),
        b"data": test.images.reshape(len(test), -1).numpy(),
        b"filenames": [b"x.png"] * len(test),
    }
    members["batches.meta"] = {
        b"label_names": [f"class{c}".encode() for c in range(num_classes)],
        b"num_cases_per_batch": len(rows) // 5,
        b"num_vis": 3072,
    }
    return _write_tar(Path(folder), "cifar-10-python.tar.gz", "cifar-10-batches-py", members)


def write_cifar100_archive(
    folder: str | Path,
    per_class: int = 5,
    num_classes: int = 100,
    test_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write a small archive in the official CIFAR-100 "python version" format; returns its path.

    Members `train`, `test` and `meta` with fine and coarse labels, as `cifar-100-python.tar.gz`.
    """
    train = make_imageset(per_class, num_classes, 32, 3, seed)
    test = make_imageset(test_per_class, num_classes, 32, 3, seed + 1)

    def batch(part: ImageSet, label: bytes) -> dict[bytes, Any]:
        return {
            b"batch_label": label,
            b"fine_labels": part.labels.tolist(),
            b"coarse_labels": (part.labels // 5).tolist(),
            b"data": part.images.reshape(len(part), -1).numpy(),
            b"filenames": [b"x.png"] * len(part),
        }

    members = {
        "train": batch(train, b"training batch 1 of 1"),
        "test": batch(test, b"testing batch 1 of 1"),
        "meta": {
            b"fine_label_names": [f"class{c}".encode() for c in range(num_classes)],
            b"coarse_label_names": [f"super{c}".encode() for c in range(max(1, num_classes // 5))],
        },
    }
    return _write_tar(Path(folder), "cifar-100-python.tar.gz", "cifar-100-python", members)


def _write_tar(folder: Path, archive: str, inner: str, members: Mapping[str, Any]) -> Path:
    import io
    import pickle
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / archive
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{inner}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_image_folders(
    folder: str | Path,
    num_classes: int = 3,
    per_class: int = 5,
    val_per_class: int = 2,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write `train/<class>/*.png` and `val/<class>/*.png` (the ImageNet folder layout); returns `folder`."""
    from PIL import Image

    root = Path(folder)
    for split, n, offset in (("train", per_class, 0), ("val", val_per_class, 1)):
        images = make_imageset(n, num_classes, size, 3, seed + offset)
        for i in range(len(images)):
            label = int(images.labels[i])
            out = root / split / f"n{label:08d}"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images.images[i].permute(1, 2, 0).numpy()).save(
                out / f"{split}_{i:05d}.png"
            )
    return root


def tiny_classifier(num_classes: int, in_channels: int = 3, width: int = 8) -> nn.Module:
    """A `ueb.nn.Classifier` small enough for unit tests (two convolutions, global pooling)."""
    from torch import nn

    from ueb.nn import Classifier

    backbone = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(backbone, width, num_classes)


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
    from ueb.params import as_dict, parse_params
    from ueb.registry import get_registry

    registry = get_registry()
    who = _who(owner)

    def bound(kind: str, name: str, params: Mapping[str, Any] | None) -> Any:
        instance = registry.create(kind, name, params)
        instance.params = parse_params(
            type(instance).Params, as_dict(instance.bind(training)), where=f"{kind} '{name}'"
        )
        return instance

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


# --------------------------------------------------------------------------- declarations


def _who(plugin: Plugin) -> str:
    return f"{plugin.kind} '{plugin.name}' ({type(plugin).__module__}:{type(plugin).__qualname__})"


def _instantiate(
    plugin: Any, base: type, params: Mapping[str, Any] | None, training: TrainingConfig
) -> Any:
    """An instance prepared as a run prepares it: typed parameters, `bind`, `preflight`."""
    from ueb.errors import ConfigError
    from ueb.params import as_dict, parse_params

    if isinstance(plugin, type):
        if not issubclass(plugin, base):
            raise AssertionError(
                f"{plugin.__qualname__} is not a {base.__name__} subclass; subclass ueb.interfaces.{base.__name__}"
            )
        cls: Any = plugin
        _check_params_class(cls)
        try:
            typed = parse_params(cls.Params, params, where=f"{cls.kind} {cls.__qualname__}")
        except ConfigError as exc:
            raise AssertionError(
                f"{cls.__qualname__}: the parameters given to the check do not parse: {exc.line()}"
            ) from exc
        instance: Any = cls(typed, name=cls.__name__.lower())
    else:
        if not isinstance(plugin, base):
            raise AssertionError(
                f"{plugin!r} is not a {base.__name__}; pass a {base.__name__} subclass or instance"
            )
        if params:
            raise TypeError("pass params only with a class; an instance already has its parameters")
        instance = plugin
        cls = type(plugin)
        _check_params_class(cls)
    who = _who(instance)
    _check_declarations(instance, who)
    bound = instance.bind(training)
    if bound is not instance.params:
        if type(bound) is not cls.Params:
            raise AssertionError(
                f"{who}.bind() returned {type(bound).__name__}, not its Params; return dataclasses.replace(self.params, ...)"
            )
        instance.params = parse_params(cls.Params, as_dict(bound), where=who)
    instance.preflight()
    identity = instance.input_identity()
    try:
        json.dumps(dict(identity), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(
            f"{who}.input_identity() is not a JSON-able mapping ({exc}); return sizes, dates, hashes"
        ) from exc
    return instance


def _check_params_class(cls: type) -> None:
    params_cls = getattr(cls, "Params", None)
    name = cls.__qualname__
    if not (isinstance(params_cls, type) and dataclasses.is_dataclass(params_cls)):
        raise AssertionError(
            f"{name}.Params is not a dataclass; declare `@dataclass(frozen=True) class Params:` inside the class"
        )
    if not params_cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise AssertionError(
            f"{name}.Params is not frozen; use @dataclass(frozen=True) (parameters are hashed into cache keys)"
        )
    try:
        hints = typing.get_type_hints(params_cls)
    except Exception as exc:
        raise AssertionError(
            f"{name}.Params has annotations that cannot be resolved ({type(exc).__name__}: {exc}); import the types they name at module level"
        ) from exc
    unbounded = [
        f.name
        for f in dataclasses.fields(params_cls)
        if f.init and is_numeric(hints.get(f.name)) and bounds_of(f) is None
    ]
    if unbounded:
        raise AssertionError(
            f"{name}.Params has numeric parameters without a range: {', '.join(unbounded)}; "
            "declare each with ueb.params.bounded(default, ge=/gt=/le=/lt=) so an out-of-range value stops the plan"
        )


def is_numeric(tp: Any) -> bool:
    """int or float, alone, optional, or as the items of a list/tuple (bool is not numeric)."""
    if tp in (int, float):
        return True
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    if origin in (typing.Union, types.UnionType):
        return any(is_numeric(a) for a in args)
    if origin in (list, tuple):
        return bool(args) and all(is_numeric(a) for a in args)
    return False


def _check_declarations(instance: Plugin, who: str) -> None:
    """version, Params (strict parsing, a lossless round trip through stored JSON), presets, requires()."""
    from ueb.errors import ConfigError
    from ueb.interfaces import Requirement
    from ueb.params import as_dict, parse_params
    from ueb.registry import KINDS

    cls = type(instance)
    if not isinstance(cls.version, str) or not cls.version.strip():
        raise AssertionError(
            f'{who} has version {cls.version!r}; declare `version = "1"` (a non-empty string, bumped when its numbers change)'
        )
    if type(instance.params) is not cls.Params:
        raise AssertionError(
            f"{who}.params is a {type(instance.params).__name__}, not its Params; keep the instance's params as the Params dataclass"
        )
    stored = as_dict(instance.params)
    try:
        json.dumps(stored, allow_nan=False)
    except ValueError as exc:
        raise AssertionError(
            f"{who} has a parameter that is not finite JSON ({exc}); stored results are strict JSON"
        ) from exc
    try:
        again = parse_params(cls.Params, stored, where=who)
    except ConfigError as exc:
        raise AssertionError(
            f"{who}'s parameters do not parse back from their stored form {stored}: {exc.line()}; make each default match its annotation"
        ) from exc
    if again != instance.params:
        diff = [
            f.name
            for f in dataclasses.fields(cls.Params)
            if getattr(again, f.name) != getattr(instance.params, f.name)
        ]
        raise AssertionError(
            f"{who}'s parameters change in a round trip through JSON ({', '.join(diff)}); annotate them with the type the default has"
        )
    try:
        parse_params(cls.Params, {**stored, "not_a_parameter": 1}, where=who)
    except ConfigError:
        pass
    else:
        raise AssertionError(
            f"{who}.Params accepted an unknown key; Params must be a plain dataclass parsed by ueb.params.parse_params"
        )
    presets = cls.presets
    if not isinstance(presets, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in presets.items()
    ):
        raise AssertionError(
            f"{who}.presets must map scale names ('smoke', 'quick', 'paper') to tables of parameters, got {presets!r}"
        )
    for scale, preset in presets.items():
        try:
            parse_params(cls.Params, {**stored, **preset}, where=f"{who} preset '{scale}'")
        except ConfigError as exc:
            raise AssertionError(f"{who}.presets['{scale}'] does not parse: {exc.line()}") from exc
    requirements = instance.requires()
    if not isinstance(requirements, list | tuple):
        raise AssertionError(
            f"{who}.requires() returned {type(requirements).__name__}; return a list of ueb.interfaces.Requirement"
        )
    for req in requirements:
        if not isinstance(req, Requirement):
            raise AssertionError(
                f"{who}.requires() returned {req!r}; return ueb.interfaces.Requirement(kind, name, params)"
            )
        if req.kind not in KINDS:
            raise AssertionError(
                f"{who}.requires() names kind '{req.kind}'; use one of {', '.join(KINDS)}"
            )


# --------------------------------------------------------------------------- poisoners


def check_poisoner(
    plugin: Any,
    *,
    params: Mapping[str, Any] | None = None,
    data: ImageSet | None = None,
    seed: int = 0,
    device: str = "cpu",
    training: TrainingConfig | None = None,
    workdir: str | Path | None = None,
) -> ImageSet:
    """Run a Poisoner (class or instance) twice on `data` and check what the framework relies on.

    Declarations (version, Params, presets, requires), the output (a tensor shaped like the
    input, uint8 or float in [0, 1], finite), the budget after 8-bit rounding, the
    `sample_wise` claim both ways, the clean set left untouched, `report()` as strict JSON, and
    the same poison from a fresh instance and a fresh artifact store under the same seed.
    Returns the checked poisoned set (uint8).
    """
    from ueb.interfaces import Budget, Poisoner

    training = training or tiny_training()
    train = data if data is not None else make_imageset(per_class=10, num_classes=4)
    poisoner = _instantiate(plugin, Poisoner, params, training)
    who = _who(poisoner)
    with _workdir(workdir) as root:
        first = _poison_once(poisoner, train, root / "first", seed, device, training, who)
        budget = poisoner.budget()
        if not isinstance(budget, Budget):
            raise AssertionError(
                f"{who}.budget() returned {budget!r}; return ueb.interfaces.Budget(norm, eps)"
            )
        if budget.norm not in ("linf", "l2", "l0", "unbounded"):
            raise AssertionError(
                f"{who} declares norm '{budget.norm}'; use linf, l2, l0 or unbounded"
            )
        if budget.norm != "unbounded" and not (0 <= budget.eps < math.inf):
            raise AssertionError(
                f"{who} declares a {budget.norm} budget of {budget.eps}; eps must be finite and >= 0 (or declare Budget('unbounded'))"
            )
        sample_wise = poisoner.sample_wise
        if not isinstance(sample_wise, bool):
            raise AssertionError(f"{who}.sample_wise is {sample_wise!r}; make it a bool property")
        poisoned = _checked_poison(train, first, budget, sample_wise, who)
        report = poisoner.report()  # the framework calls it on this instance, right after poison()
        if not isinstance(report, dict):
            raise AssertionError(
                f"{who}.report() returned {type(report).__name__}; return a dict of facts"
            )
        try:
            json.dumps(report, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AssertionError(
                f"{who}.report() is not strict JSON ({exc}); return str/int/float/bool/None/list/dict values, None for inf or NaN"
            ) from exc
        if sample_wise:
            check_sample_wise(train, poisoned, who)
        else:
            check_class_wise(train, poisoned, who)
        again = type(poisoner)(poisoner.params, name=poisoner.name)
        second = _checked_poison(
            train,
            _poison_once(again, train, root / "second", seed, device, training, who),
            budget,
            sample_wise,
            who,
        )
        if not torch.equal(poisoned, second):
            diff = (poisoned.to(torch.int16) - second.to(torch.int16)).abs()
            raise AssertionError(
                f"{who} is not deterministic: two runs with seed {seed} differ in {int((diff > 0).sum())} values (up to {int(diff.max())} levels); "
                "draw all randomness from generators seeded by ctx.seed (or from torch's global RNG, which the framework seeds)"
            )
        other_seed = _checked_poison(
            train,
            _poison_once(
                type(poisoner)(poisoner.params, name=poisoner.name),
                train,
                root / "other-seed",
                seed + 1,
                device,
                training,
                who,
            ),
            budget,
            sample_wise,
            who,
        )
        check_seed_dependence(poisoner, poisoned, other_seed, seed, who)
    return train.with_images(poisoned, poison=poisoner.name)


def check_seed_dependence(
    poisoner: Any, poisoned: torch.Tensor, other: torch.Tensor, seed: int, who: str
) -> None:
    """Two seeds give two poisons, so a table's spread over seeds samples the poison too,
    unless the poisoner declares `deterministic = True` (its method has no randomness)."""
    if getattr(type(poisoner), "deterministic", False):
        return
    if torch.equal(poisoned, other):
        raise AssertionError(
            f"{who} gives byte-identical poisons for seeds {seed} and {seed + 1}: the spread over seeds would not sample the poison; "
            "draw every random choice (initialisation, batches, sampling) from ctx.seed, or declare `deterministic = True` if the method has no randomness"
        )


def _poison_once(
    poisoner: Any,
    train: ImageSet,
    root: Path,
    seed: int,
    device: str,
    training: TrainingConfig,
    who: str,
) -> Any:
    ctx = make_run_context(root, seed=seed, device=device, training=training, owner=poisoner)
    before = train.fingerprint()
    _seed(seed)
    output = poisoner.poison(train, ctx)
    if train.fingerprint() != before:
        raise AssertionError(
            f"{who}.poison() changed the clean training set in place; work on a copy (train.float01().clone())"
        )
    return output


def _checked_poison(
    train: ImageSet, output: Any, budget: Any, sample_wise: bool, who: str
) -> torch.Tensor:
    from ueb.errors import IntegrityError
    from ueb.integrity import check_poison

    try:
        poisoned, _stats = check_poison(train, output, budget, sample_wise, who)
    except IntegrityError as exc:
        raise AssertionError(exc.line()) from exc
    return poisoned


def check_class_wise(clean: ImageSet, poisoned: torch.Tensor, who: str = "poisoner") -> None:
    """A poisoner with `sample_wise = False` gives every image of a class the same perturbation.

    Compared on the stored uint8 images, value by value, wherever the result is not clipped
    (0 or 255): either the change is the same for every image of the class (additive noise,
    one level of rounding allowed), or the changed images all hold the same value there (a
    pasted patch or pixel, whose difference to the clean image necessarily varies).
    """
    found = _within_class_difference(clean, poisoned)
    if found is not None:
        raise AssertionError(
            f"{who} declares sample_wise = False, but {found}; give a class one pattern, or "
            "return True from sample_wise"
        )


def check_sample_wise(clean: ImageSet, poisoned: torch.Tensor, who: str = "poisoner") -> None:
    """A poisoner with `sample_wise = True` perturbs some images of a class differently (where
    not clipped; stricter than the run's integrity check, which compares raw differences)."""
    if _within_class_difference(clean, poisoned) is None:
        raise AssertionError(
            f"{who} claims to be sample-wise but gives every image of a class one pattern "
            "(compared where not clipped); index the noise by sample, or return False from "
            "sample_wise"
        )


def _within_class_difference(clean: ImageSet, poisoned: torch.Tensor) -> str | None:
    """Where two images of one class get different perturbations (see check_class_wise), or None."""
    p = poisoned.to(torch.int16).cpu()
    d = p - clean.uint8().to(torch.int16).cpu()
    far = 1 << 12
    for k in range(clean.num_classes):
        idx = torch.nonzero(clean.labels.cpu() == k).flatten()
        if len(idx) < 2:
            continue
        dk, pk = d[idx], p[idx]
        unclipped = (pk > 0) & (pk < 255)
        changed = dk != 0
        d_hi = torch.where(unclipped, dk, -far).amax(0)
        d_lo = torch.where(unclipped, dk, far).amin(0)
        p_hi = torch.where(changed, pk, -far).amax(0)
        p_lo = torch.where(changed, pk, far).amin(0)
        same_change = (d_hi - d_lo <= 1) | (d_hi == -far)
        same_value = (p_hi - p_lo <= 1) | (p_hi == -far)
        bad = ~(same_change | same_value)
        if bool(bad.any()):
            ch, y, x = (int(v) for v in torch.nonzero(bad)[0])
            col = torch.where(unclipped[:, ch, y, x], dk[:, ch, y, x], 0)
            i, j = int(idx[int(col.argmax())]), int(idx[int(col.argmin())])
            return (
                f"images of class {k} get different perturbations at {int(bad.sum())} of {bad.numel()} "
                f"values (channel {ch}, row {y}, column {x}: image {i} {int(d[i, ch, y, x]):+d} "
                f"levels, image {j} {int(d[j, ch, y, x]):+d})"
            )
    return None


# --------------------------------------------------------------------------- countermeasures

STAGE_HOOKS = {
    "data": ("transform_train_set", "transform_test_set"),
    "train": ("augment", "loss"),
    "protocol": ("fit",),
}


def check_countermeasure(
    plugin: Any,
    *,
    params: Mapping[str, Any] | None = None,
    data: ImageSet | None = None,
    test: ImageSet | None = None,
    victim: Any = None,
    seed: int = 0,
    device: str = "cpu",
    training: TrainingConfig | None = None,
    workdir: str | Path | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> TrainResult:
    """Run a Countermeasure (class or instance) through every hook the framework calls.

    Declarations; `stage` declared and matching what the hooks do (data: only transform_*
    change anything; train: only augment/loss; protocol: fit is overridden, and only
    protocol overrides it); the data-stage transforms keep length, labels, classes and image
    shape, return ImageSets with float values in `value_range` (None: any finite value, for a
    method that leaves [0, 1] on purpose), leave their input untouched and repeat under the
    same seed; `augment` returns a Batch of the same size; `loss` a finite scalar with a
    gradient; `fit` (with a tiny training protocol) a TrainResult with accuracies in [0, 100]
    and JSON-storable history and extras. `victim` (a Victim class or instance) builds the
    model; default `tiny_classifier`. Returns the TrainResult.
    """
    from ueb.interfaces import Countermeasure

    training = training or tiny_training()
    train = data if data is not None else make_imageset(per_class=10, num_classes=4)
    if test is None:
        test = make_imageset(
            per_class=4,
            num_classes=train.num_classes,
            size=train.image_size,
            channels=train.channels,
            seed=seed + 1,
        )
    cm = _instantiate(plugin, Countermeasure, params, training)
    who = _who(cm)
    stage = _check_stage(cm, who)

    def model() -> nn.Module:
        torch.manual_seed(seed)
        if victim is None:
            return tiny_classifier(train.num_classes, train.channels)
        from ueb.interfaces import Victim

        built = _instantiate(victim, Victim, None, training)
        return built.build(train.num_classes, train.image_size, train.channels)

    with _workdir(workdir) as root:
        ctx = make_run_context(root, seed=seed, device=device, training=training, owner=cm)
        new_train = _transformed(cm, "transform_train_set", train, ctx, seed, value_range, who)
        new_test = _transformed(cm, "transform_test_set", test, ctx, seed, value_range, who)
        again = type(cm)(cm.params, name=cm.name)
        repeat = _transformed(again, "transform_train_set", train, ctx, seed, value_range, who)
        if not torch.equal(repeat.images, new_train.images):
            raise AssertionError(
                f"{who}.transform_train_set is not deterministic under seed {seed}; draw randomness from a generator seeded by ctx.seed"
            )
        if stage != "data":
            for hook, before, after in (
                ("transform_train_set", train, new_train),
                ("transform_test_set", test, new_test),
            ):
                if not torch.equal(before.float01(), after.float01()):
                    raise AssertionError(
                        f"{who} declares stage '{stage}' but {hook}() changes the images; declare stage = 'data'"
                    )
        _check_step_hooks(cm, model(), new_train, training, seed, stage, who)
        from ueb.training import Trainer

        trainer = Trainer(training, device, seed)
        result = cm.fit(model(), new_train, new_test, trainer, ctx)
        _check_train_result(result, who)
    return result


def _check_stage(cm: Any, who: str) -> str:
    """The declared stage against the hooks the class overrides; returns the stage."""
    from ueb.interfaces import Countermeasure

    stage = type(cm).stage
    if stage not in STAGE_HOOKS:
        raise AssertionError(
            f"{who} declares stage {stage!r}; declare the class attribute stage = 'data', 'train' or 'protocol'"
        )
    overrides_fit = type(cm).fit is not Countermeasure.fit
    if stage == "protocol" and not overrides_fit:
        raise AssertionError(
            f"{who} declares stage 'protocol' but does not override fit(); override fit, or declare the stage of the hooks it overrides"
        )
    if stage != "protocol" and overrides_fit:
        raise AssertionError(
            f"{who} declares stage '{stage}' but overrides fit(), a protocol-stage hook; declare stage = 'protocol'"
        )
    return str(stage)


def _overrides(cm: Any, hook: str) -> bool:
    from ueb.interfaces import Countermeasure

    return getattr(type(cm), hook) is not getattr(Countermeasure, hook)


def _transformed(
    cm: Any,
    hook: str,
    images: ImageSet,
    ctx: RunContext,
    seed: int,
    value_range: tuple[float, float] | None,
    who: str,
) -> ImageSet:
    before = images.fingerprint()
    _seed(seed)
    out = getattr(cm, hook)(images, ctx)
    where = f"{who}.{hook}"
    if images.fingerprint() != before:
        raise AssertionError(
            f"{where} changed its input in place; build new images (images.with_images(...))"
        )
    if not isinstance(out, ImageSet):
        raise AssertionError(
            f"{where} returned {type(out).__name__}; return an ImageSet (images.with_images(new_images))"
        )
    if len(out) != len(images):
        raise AssertionError(
            f"{where} returned {len(out)} images for {len(images)}; keep one image per input image"
        )
    if tuple(out.images.shape[1:]) != tuple(images.images.shape[1:]):
        raise AssertionError(
            f"{where} changed the image shape {tuple(images.images.shape[1:])} to {tuple(out.images.shape[1:])}; keep (C, H, W)"
        )
    if not torch.equal(out.labels.cpu(), images.labels.cpu()) or out.classes != images.classes:
        raise AssertionError(
            f"{where} changed labels or classes; a countermeasure transforms images only"
        )
    if out.images.is_floating_point():
        x = out.images
        if not bool(torch.isfinite(x).all()):
            raise AssertionError(f"{where} returned NaN or inf pixels")
        lo, hi = float(x.min()), float(x.max())
        if value_range is not None and (lo < value_range[0] - 1e-6 or hi > value_range[1] + 1e-6):
            raise AssertionError(
                f"{where} returned float images in [{lo:.4f}, {hi:.4f}]; clamp to [{value_range[0]:g}, {value_range[1]:g}]"
            )
    return out


def _check_step_hooks(
    cm: Any,
    model: nn.Module,
    train: ImageSet,
    training: TrainingConfig,
    seed: int,
    stage: str,
    who: str,
) -> None:
    from ueb.interfaces import Batch, StepContext

    n = min(8, len(train))
    x, y = train.float01()[:n].float(), train.labels[:n]
    model.train()
    for step in (0, training.iterations - 1):
        ctx = StepContext(
            step, training.iterations, torch.Generator().manual_seed(seed + step), model
        )
        batch = cm.augment(Batch(x.clone(), y.clone()), ctx)
        where = f"{who}.augment (step {step})"
        if not isinstance(batch, Batch):
            raise AssertionError(
                f"{where} returned {type(batch).__name__}; return a ueb.interfaces.Batch"
            )
        if batch.x.dim() != 4 or batch.x.shape[0] != batch.y.shape[0] or batch.y.dim() != 1:
            raise AssertionError(
                f"{where} returned x {tuple(batch.x.shape)} and y {tuple(batch.y.shape)}; keep x (N, C, H, W) and y (N,) paired"
            )
        if batch.x.shape[0] != n or tuple(batch.x.shape[1:]) != tuple(x.shape[1:]):
            raise AssertionError(
                f"{where} turned a batch {tuple(x.shape)} into {tuple(batch.x.shape)}; keep the batch size and image shape"
            )
        if not batch.x.is_floating_point() or not bool(torch.isfinite(batch.x).all()):
            raise AssertionError(
                f"{where} returned non-float or non-finite images; return float images in [0, 1]"
            )
        if (batch.y2 is None) != (batch.lam is None):
            raise AssertionError(f"{where} set only one of y2 and lam; a mixed batch sets both")
        if (
            batch.y2 is not None
            and batch.lam is not None
            and (batch.y2.shape != batch.y.shape or batch.lam.shape != batch.y.shape)
        ):
            raise AssertionError(
                f"{where} returned y2 {tuple(batch.y2.shape)} and lam {tuple(batch.lam.shape)}; both are (N,) like y"
            )
        if (
            stage == "data"
            and _overrides(cm, "augment")
            and (batch.y2 is not None or not torch.equal(batch.x, x))
        ):
            raise AssertionError(
                f"{where} changes the batch, but {who} declares stage 'data'; declare stage = 'train'"
            )
        model.zero_grad(set_to_none=True)
        loss = cm.loss(model, batch, ctx)
        where = f"{who}.loss (step {step})"
        if stage == "data" and _overrides(cm, "loss") and isinstance(loss, torch.Tensor):
            with torch.no_grad():
                plain = batch.loss(model(batch.x))
            if not torch.allclose(loss.detach(), plain, rtol=1e-5, atol=1e-6):
                raise AssertionError(
                    f"{where} differs from the plain loss, but {who} declares stage 'data'; declare stage = 'train'"
                )
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise AssertionError(
                f"{where} returned {shape}; return a scalar tensor (reduce with .mean())"
            )
        if not loss.requires_grad:
            raise AssertionError(
                f"{where} returned a tensor without a gradient; compute it from model(x) without torch.no_grad()"
            )
        if not bool(torch.isfinite(loss)):
            raise AssertionError(f"{where} is {float(loss)}; it must be finite")
        loss.backward()
        if not any(p.grad is not None for p in model.parameters()):
            raise AssertionError(
                f"{where} reaches none of the model's parameters; compute it through the model passed in"
            )


def _check_train_result(result: Any, who: str) -> None:
    from ueb.interfaces import TrainResult

    where = f"{who}.fit"
    if not isinstance(result, TrainResult):
        raise AssertionError(
            f"{where} returned {type(result).__name__}; return a ueb.interfaces.TrainResult"
        )
    for name in ("final_acc", "peak_acc"):
        value = getattr(result, name)
        if not isinstance(value, int | float) or not 0 <= value <= 100:
            raise AssertionError(
                f"{where} returned {name} = {value!r}; accuracies are percentages in [0, 100]"
            )
    if result.peak_acc + 1e-9 < result.final_acc:
        raise AssertionError(
            f"{where} returned peak_acc {result.peak_acc} below final_acc {result.final_acc}; the peak includes the end"
        )
    if not isinstance(result.iterations, int) or result.iterations < 0:
        raise AssertionError(
            f"{where} returned iterations = {result.iterations!r}; a count of training steps"
        )
    try:
        json.dumps({"history": result.history, "extra": result.extra}, allow_nan=False, default=str)
    except (TypeError, ValueError) as exc:
        raise AssertionError(
            f"{where}'s history or extra cannot be stored as strict JSON ({exc})"
        ) from exc


# --------------------------------------------------------------------------- victims


def check_victim(
    plugin: Any,
    *,
    params: Mapping[str, Any] | None = None,
    num_classes: int = 4,
    shapes: tuple[tuple[int, int], ...] = ((32, 3), (48, 1)),
    seed: int = 0,
    training: TrainingConfig | None = None,
) -> None:
    """Build a Victim (class or instance) at each (image_size, in_channels) of `shapes`.

    It must return a `ueb.nn.Classifier` whose backbone gives flat (N, feature_dim) features
    and whose output is (N, num_classes) finite logits for [0, 1] float images; two builds
    under one `torch.manual_seed` must be identical; one SGD step must change the weights.
    """
    from torch import nn

    from ueb.interfaces import Victim
    from ueb.nn import Classifier

    victim = _instantiate(plugin, Victim, params, training or tiny_training())
    who = _who(victim)
    for size, channels in shapes:
        where = f"{who}.build({num_classes}, {size}, {channels})"
        torch.manual_seed(seed)
        model = victim.build(num_classes, size, channels)
        if not isinstance(model, Classifier):
            raise AssertionError(
                f"{where} returned {type(model).__name__}; return ueb.nn.Classifier(backbone, feature_dim, num_classes)"
            )
        torch.manual_seed(seed)
        twin = victim.build(num_classes, size, channels)
        a, b = model.state_dict(), twin.state_dict()
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            raise AssertionError(
                f"{where} builds different weights under the same torch.manual_seed; initialise from torch's global RNG only"
            )
        x = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(seed))
        model.train()
        try:
            feats = model.backbone(x - model.shift)
        except Exception as exc:
            raise AssertionError(
                f"{where}: the model fails on a batch of shape {tuple(x.shape)} ({type(exc).__name__}: {exc})"
            ) from exc
        if tuple(feats.shape) != (4, model.feature_dim):
            raise AssertionError(
                f"{where}: the backbone returns {tuple(feats.shape)} for 4 images, not (4, feature_dim={model.feature_dim}); end it with flat features (nn.Flatten())"
            )
        logits = model(x)
        if (
            tuple(logits.shape) != (4, num_classes)
            or not logits.is_floating_point()
            or not bool(torch.isfinite(logits).all())
        ):
            raise AssertionError(
                f"{where} maps (4, {channels}, {size}, {size}) to {tuple(logits.shape)} {logits.dtype}; expected finite (4, {num_classes}) logits"
            )
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss = nn.functional.cross_entropy(model(x), torch.arange(4) % num_classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if all(torch.equal(before[k], v) for k, v in model.named_parameters()):
            raise AssertionError(
                f"{where}: one SGD step changed no weight; make the parameters trainable"
            )
        if not bool(torch.isfinite(model(x)).all()):
            raise AssertionError(f"{where}: logits are not finite after one training step")


# --------------------------------------------------------------------------- datasets


def check_dataset(
    plugin: Any, *, params: Mapping[str, Any] | None = None, root: str | Path | None = None
) -> Splits:
    """Load a Dataset (class or instance) from `root` twice and check the splits.

    Splits of two non-empty ImageSets with the same classes, channels and square image size,
    uint8 or float32 in [0, 1], labels in range, every class in the training split, and the
    same content on a second load. Returns the splits.
    """
    from ueb.interfaces import Dataset, Splits

    dataset = _instantiate(plugin, Dataset, params, tiny_training())
    who = _who(dataset)
    where = f"{who}.load({str(root) if root is not None else 'None'})"
    splits = dataset.load(Path(root) if root is not None else None)
    if not isinstance(splits, Splits):
        raise AssertionError(
            f"{where} returned {type(splits).__name__}; return ueb.interfaces.Splits(train, test)"
        )
    for part in ("train", "test"):
        images = getattr(splits, part)
        if not isinstance(images, ImageSet):
            raise AssertionError(f"{where}: {part} is {type(images).__name__}; make it an ImageSet")
        if len(images) == 0:
            raise AssertionError(f"{where}: the {part} split is empty")
        if images.images.shape[-1] != images.images.shape[-2]:
            raise AssertionError(
                f"{where}: {part} images are {tuple(images.images.shape[-2:])}; victims take square images"
            )
        labels = images.labels
        if int(labels.min()) < 0 or int(labels.max()) >= images.num_classes:
            raise AssertionError(
                f"{where}: {part} labels span [{int(labels.min())}, {int(labels.max())}] but there are {images.num_classes} classes"
            )
        if images.images.is_floating_point():
            lo, hi = float(images.images.min()), float(images.images.max())
            if not (lo >= 0 and hi <= 1):
                raise AssertionError(
                    f"{where}: {part} float images span [{lo:.4f}, {hi:.4f}]; use [0, 1] (or uint8)"
                )
    train, test = splits.train, splits.test
    if train.classes != test.classes:
        raise AssertionError(
            f"{where}: train and test list different classes; give both the same tuple"
        )
    if train.images.shape[1:] != test.images.shape[1:]:
        raise AssertionError(
            f"{where}: train images are {tuple(train.images.shape[1:])}, test images {tuple(test.images.shape[1:])}; use one shape"
        )
    missing = sorted(set(range(train.num_classes)) - set(train.labels.tolist()))
    if missing:
        raise AssertionError(f"{where}: classes {missing[:5]} have no training image")
    again = type(dataset)(dataset.params, name=dataset.name).load(
        Path(root) if root is not None else None
    )
    if (again.train.fingerprint(), again.test.fingerprint()) != (
        train.fingerprint(),
        test.fingerprint(),
    ):
        raise AssertionError(
            f"{where} returns different data on a second load; keep the order and content fixed"
        )
    return splits


__all__ = [
    "check_class_wise",
    "check_countermeasure",
    "check_dataset",
    "check_poisoner",
    "check_sample_wise",
    "check_victim",
    "make_imageset",
    "make_run_context",
    "tiny_classifier",
    "tiny_training",
    "write_cifar100_archive",
    "write_cifar_archive",
    "write_image_folders",
]
