"""The run seed makes the Deep Hiding poison: two seeds, two poisons; one seed, one poison."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ueb_deephiding.poisoner import DeepHiding

from ueb.registry import get_registry
from ueb.testing import make_imageset, make_run_context

# The smoke preset, shortened: which seed made a poison shows after a few steps already.
SMOKE = {**DeepHiding.presets["smoke"], "per_class": 2, "iterations": 8, "checkpoint_every": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train():
    return make_imageset(per_class=6, num_classes=3, size=16)


def _poison(name, train, root, seed, **params):
    from ueb.profile import load_profile

    ctx = make_run_context(root, seed=seed, training=load_profile("smoke").training)
    dh = get_registry().create("poisoner", name, {**SMOKE, **params})
    out = dh.poison(train, ctx)
    return out.mul(255).round().to(torch.uint8), dh.report(), ctx


@pytest.fixture(scope="module")
def poisons(train, tmp_path_factory):
    """DH(C) and DH(S) under seeds 0 and 1 in one store, and seed 0 again in a fresh store."""
    shared = tmp_path_factory.mktemp("dh-seeds")
    out = {}
    for seed in (0, 1):
        for name in ("deephiding", "deephiding-s"):
            out[name, seed] = _poison(name, train, shared, seed)
    fresh = tmp_path_factory.mktemp("dh-seeds-again")
    for name in ("deephiding", "deephiding-s"):
        out[name, "again"] = _poison(name, train, fresh, 0)
    return out


@pytest.mark.parametrize("name", ["deephiding", "deephiding-s"])
def test_two_seeds_give_two_poisons_and_one_seed_the_same_bytes(poisons, name):
    (a, fa, _), (b, fb, _), (again, fagain, _) = (
        poisons[name, 0],
        poisons[name, 1],
        poisons[name, "again"],
    )
    assert not torch.equal(a, b)
    assert float((a.float() - b.float()).abs().mean()) > 0.1  # levels: not a stray rounding
    assert torch.equal(a, again)
    assert fa["poison_sha256"] != fb["poison_sha256"]
    assert fa["poison_sha256"] == fagain["poison_sha256"]
    import hashlib

    assert fa["poison_sha256"] == hashlib.sha256(a.numpy().tobytes()).hexdigest()
    assert (fa["seed"], fb["seed"]) == (0, 1)
    assert fa["hider_artifact"] != fb["hider_artifact"]  # the seed is in the hider's key
    assert fa["extractor"]["seed"] == 0 and fb["extractor"]["seed"] == 1


def test_both_modes_of_one_seed_share_one_hider(poisons):
    assert (
        poisons["deephiding", 0][1]["hider_artifact"]
        == poisons["deephiding-s", 0][1]["hider_artifact"]
    )
    root = poisons["deephiding", 0][2].artifacts.root / "deephiding-hider"
    assert len([f for f in root.iterdir() if f.is_dir()]) == 2  # seeds 0 and 1


def test_hider_seed_overrides_the_run_seed(train, tmp_path):
    a, fa, _ = _poison("deephiding", train, tmp_path, 0, hider_seed=7)
    b, fb, _ = _poison("deephiding", train, tmp_path, 1, hider_seed=7)
    assert torch.equal(a, b) and fa["seed"] == fb["seed"] == 7


def test_the_hider_does_not_depend_on_the_victims_training(train, tmp_path):
    """The extractor trains with its own protocol: another victim protocol reuses the hider."""
    from ueb.profile import load_profile

    dh = get_registry().create("poisoner", "deephiding", SMOKE)
    for training in (
        load_profile("smoke").training,
        replace(load_profile("smoke").training, lr=0.3, iterations=99),
    ):
        ctx = make_run_context(tmp_path, seed=0, training=training)
        dh.poison(train, ctx)
    hiders = [f for f in (tmp_path / "artifacts" / "deephiding-hider").iterdir() if f.is_dir()]
    extractors = [
        f for f in (tmp_path / "artifacts" / "deephiding-extractor").iterdir() if f.is_dir()
    ]
    assert len(hiders) == 1 and len(extractors) == 1
