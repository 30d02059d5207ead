"""The poisoner kit: a Poisoner run twice and with another seed, its output checked."""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ueb.imageset import ImageSet

if typing.TYPE_CHECKING:
    from ueb.profile import TrainingConfig
from ueb.testing.contexts import _seed, _workdir, make_run_context, tiny_training
from ueb.testing.declarations import _instantiate, _who
from ueb.testing.fixtures import make_imageset

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
