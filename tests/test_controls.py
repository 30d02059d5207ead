"""Calibration controls (cw-uniform, cw-hf, cw-mf, cw-lf) and the textured Fashion-MNIST variant:
registered, class-wise, within budget, seeded, at the declared spatial scale."""

from __future__ import annotations

import pytest
import torch

from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.integrity import check_poison
from ueb.registry import get_registry

CONTROLS = {"cw-uniform": 1, "cw-hf": 1, "cw-mf": 2, "cw-lf": 8}


class _Ctx:
    """The controls read only the seed from their context."""

    def __init__(self, seed: int) -> None:
        self.seed = seed


def _grey_set(per_class: int = 5, num_classes: int = 3, value: int = 128) -> ImageSet:
    """Flat mid-grey images: nothing is clipped, so the stored delta is the pattern itself."""
    n = per_class * num_classes
    images = torch.full((n, 3, 32, 32), value, dtype=torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return ImageSet(images, labels, tuple(f"c{k}" for k in range(num_classes)))


def _stored_delta(name: str, train: ImageSet, seed: int = 0, **params) -> tuple[torch.Tensor, dict]:
    poisoner = get_registry().create("poisoner", name, params)
    out = poisoner.poison(train, _Ctx(seed))
    images, stats = check_poison(train, out, poisoner.budget(), poisoner.sample_wise, name)
    delta = (images.to(torch.int16) - train.uint8().to(torch.int16)).float()
    return delta, {**stats, **poisoner.report()}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_control_is_registered_class_wise_and_within_8_of_255(name):
    entry = get_registry().get("poisoner", name)
    assert "calibration control" in entry.summary.lower() and "method-independent" in entry.summary
    assert entry.meta.get("hidden_from_all") is True  # calibration, not a method: not in `-p all`
    poisoner = get_registry().create("poisoner", name)
    assert poisoner.sample_wise is False
    assert poisoner.budget().norm == "linf" and poisoner.budget().eps == pytest.approx(8 / 255)
    assert poisoner.params.block == CONTROLS[name]
    train = _grey_set()
    delta, facts = _stored_delta(name, train)
    assert float(delta.abs().max()) == 8
    assert facts["control"] == "class-wise" and facts["block"] == CONTROLS[name]
    for k in range(3):
        d = delta[train.labels == k]
        assert bool((d == d[0]).all()), "every image of a class carries the same pattern"
    assert not torch.equal(delta[0], delta[5]), "classes carry different patterns"


def test_sign_controls_are_plus_minus_eps_and_uniform_fills_the_range():
    train = _grey_set()
    for name in ("cw-hf", "cw-mf", "cw-lf"):
        delta, _ = _stored_delta(name, train)
        assert set(delta.unique().tolist()) == {-8.0, 8.0}
    delta, _ = _stored_delta("cw-uniform", train)
    assert len(delta.unique()) == 17  # every level in -8..8 after rounding


@pytest.mark.parametrize("name", ["cw-mf", "cw-lf"])
def test_block_controls_are_constant_on_their_blocks(name):
    b = CONTROLS[name]
    delta, facts = _stored_delta(name, _grey_set())
    blocks = delta.unfold(2, b, b).unfold(3, b, b)  # (N, C, H/b, W/b, b, b)
    assert bool((blocks == blocks[..., :1, :1]).all())
    assert not bool((blocks[..., :1, :1] == blocks[:, :, :1, :1, :1, :1]).all())
    assert facts["haar_detail_share"] == pytest.approx(0.0, abs=1e-6)


def test_pixel_scale_controls_live_in_the_haar_detail_bands():
    _, hf = _stored_delta("cw-hf", _grey_set())
    _, uni = _stored_delta("cw-uniform", _grey_set())
    # independent values per pixel put 3/4 of their energy in the three detail bands
    assert hf["haar_detail_share"] == pytest.approx(0.75, abs=0.03)
    assert uni["haar_detail_share"] == pytest.approx(0.75, abs=0.03)


def test_controls_are_seeded_by_the_run_seed():
    train = _grey_set()
    a, _ = _stored_delta("cw-hf", train, seed=0)
    b, _ = _stored_delta("cw-hf", train, seed=0)
    c, _ = _stored_delta("cw-hf", train, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eps_and_block_are_parameters():
    delta, facts = _stored_delta("cw-hf", _grey_set(), eps=4 / 255, block=4)
    assert float(delta.abs().max()) == 4 and facts["block"] == 4
    with pytest.raises(ConfigError, match="eps"):
        get_registry().create("poisoner", "cw-lf", {"eps": 0})
    with pytest.raises(ConfigError, match="block"):
        get_registry().create("poisoner", "cw-lf", {"block": 0})


def test_controls_clip_to_the_valid_range():
    train = _grey_set(value=0)
    delta, _ = _stored_delta("cw-hf", train)
    assert float(delta.min()) == 0 and float(delta.max()) == 8


# --------------------------------------------------------------------------- textured dataset


@pytest.fixture(scope="module")
def textured():
    return get_registry().create("dataset", "fashion-mnist-textured").load(None)


@pytest.fixture(scope="module")
def plain():
    return get_registry().create("dataset", "fashion-mnist").load(None)


def test_textured_keeps_labels_and_garments_and_replaces_the_black_background(textured, plain):
    for split, ref in ((textured.train, plain.train), (textured.test, plain.test)):
        assert split.images.shape == ref.images.shape and split.images.dtype == torch.uint8
        assert torch.equal(split.labels, ref.labels) and split.classes == ref.classes
        opaque = ref.images >= 64  # garment pixels at or above opaque_at hide the background
        assert torch.equal(split.images[opaque], ref.images[opaque])
        background = ref.images == 0
        assert float((split.images[background] == 0).float().mean()) < 0.01
        # colour photos among the backgrounds: the images are no longer grey
        assert bool((split.images[:, 0] != split.images[:, 1]).any())
    assert "skimage:" in textured.source


def test_textured_is_deterministic_and_its_seed_changes_the_backgrounds(textured):
    again = get_registry().create("dataset", "fashion-mnist-textured").load(None)
    assert again.train.fingerprint() == textured.train.fingerprint()
    other = get_registry().create("dataset", "fashion-mnist-textured", {"seed": 1}).load(None)
    assert other.train.fingerprint() != textured.train.fingerprint()
    assert not torch.equal(textured.train.images[:50], textured.test.images[:50])


def test_textured_rejects_bad_settings():
    with pytest.raises(ConfigError, match="no sample photo"):
        get_registry().create("dataset", "fashion-mnist-textured", {"photos": ["nope"]}).load(None)
    with pytest.raises(ConfigError, match="photo_size"):
        get_registry().create("dataset", "fashion-mnist-textured", {"photo_size": 16}).load(None)


# --------------------------------------------------------------------------- calibration script


def _calibrate():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "testbed" / "calibrate.py"
    spec = importlib.util.spec_from_file_location("testbed_calibrate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(clean, controls):
    def row(accs, latched):
        return {
            "acc": accs,
            "mean": sum(accs) / 3,
            "std": float(torch.tensor(accs).std()),
            "latched": latched,
            "seeds": [0, 1, 2],
        }

    out = {"clean": row(clean, 0)}
    out.update({name: row(accs, latched) for name, (accs, latched) in controls.items()})
    return out


def test_calibration_verdict_needs_every_control_learned_and_a_tight_clean_row():
    cal = _calibrate()
    learned = ([30.0, 32.0, 35.0], 2)
    good = {p: learned for p in ("cw-uniform", "cw-hf", "cw-mf", "cw-lf")}
    assert cal.verdict(_rows([85.0, 86.0, 85.5], good)) == "valid"
    # one latch short, or a drop of less than 20 points, is not learned
    assert (
        cal.verdict(_rows([85.0, 86.0, 85.5], {**good, "cw-hf": ([30.0, 32.0, 35.0], 1)}))
        != "valid"
    )
    assert (
        cal.verdict(_rows([85.0, 86.0, 85.5], {**good, "cw-hf": ([70.0, 70.0, 70.0], 3)}))
        != "valid"
    )
    # a clean row spread over more than 2 points is not a test bed
    assert cal.verdict(_rows([80.0, 86.0, 85.5], good)) != "valid"


def test_calibration_cell_runs_end_to_end_on_a_tiny_candidate():
    cal = _calibrate()
    tiny = cal.Candidate(
        "tiny",
        victim_params={"stem_width": 4, "widths": [8]},
        training={"iterations": 3, "milestones": [2], "eval_every": 3, "batch_size": 16},
        train_per_class=6,
        test_per_class=3,
    )
    train, test = cal.load_data(tiny)
    assert len(train) == 60 and len(test) == 30
    cell = cal.run_cell(tiny, "cw-hf", 0, train, test)
    assert cell["poisoner"] == "cw-hf" and 0 <= cell["final_acc"] <= 100
    assert set(cell["probe"]) == {"target_rate", "train_acc", "latched", "threshold", "pairs"}
    assert cell["probe"]["pairs"] == 30
    assert cell["poison_facts"]["haar_detail_share"] > 0.7
