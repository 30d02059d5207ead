"""UC and 14A on a tiny random CLIP model saved into a temporary folder (no weights fetched)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ueb_attacks_clip.one_for_all import OneForAll
from ueb_attacks_clip.tiny_clip import save_tiny_clip
from ueb_attacks_clip.uc import UnlearnableClusters

from ueb.errors import ConfigError
from ueb.params import parse_params
from ueb.registry import get_registry
from ueb.testing import check_poisoner, make_imageset, make_run_context

SMOKE_UC = UnlearnableClusters.presets["smoke"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny CLIP (1 layer, width 16, 32x32 input) with its processor."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def uc_params(clip_dir: Path, **extra: object) -> dict[str, object]:
    return {**SMOKE_UC, "clip_path": str(clip_dir), **extra}


# ---------------------------------------------------------------------------------------- UC


def test_uc_keeps_the_contract_on_a_tiny_clip(clip_dir: Path, tmp_path: Path) -> None:
    poisoned = check_poisoner(UnlearnableClusters, params=uc_params(clip_dir), workdir=tmp_path)
    clean = make_imageset(per_class=10, num_classes=4)
    delta = poisoned.images.to(torch.int16) - clean.images.to(torch.int16)
    assert int(delta.abs().max()) <= 16  # Linf 16/255 after rounding
    assert int(delta.abs().max()) >= 8  # and the generator's tanh output uses the budget


def test_uc_gives_one_perturbation_per_cluster(clip_dir: Path, tmp_path: Path) -> None:
    train = make_imageset(per_class=6, num_classes=3)
    p = parse_params(UnlearnableClusters.Params, uc_params(clip_dir), "uc")
    uc = UnlearnableClusters(p, name="uc")
    out = uc.poison(train, make_run_context(tmp_path))
    sizes = uc.report()["cluster_sizes"]
    assert sum(sizes) == len(train) and len(sizes) == SMOKE_UC["num_clusters"]
    assert all(s > 0 for s in sizes)
    # where nothing is clipped, images of one cluster differ from their clean image by one delta
    x = train.float01()
    unclipped = (out > 0) & (out < 1) & (x + 16 / 255 < 1) & (x - 16 / 255 > 0)
    diffs = {}
    ca = uc.assignment
    assert ca is not None
    for i in range(len(train)):
        d = torch.where(unclipped[i], out[i] - x[i], torch.nan)
        diffs.setdefault(int(ca[i]), []).append(d)
    for members in diffs.values():
        ref = members[0]
        for d in members[1:]:
            both = ~(ref.isnan() | d.isnan())
            assert torch.allclose(ref[both], d[both], atol=1e-5)


def test_uc_is_label_agnostic(clip_dir: Path, tmp_path: Path) -> None:
    train = make_imageset(per_class=8, num_classes=4)
    shuffled = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))
    relabelled = type(train)(train.images, train.labels[shuffled], train.classes, train.name)
    p = parse_params(UnlearnableClusters.Params, uc_params(clip_dir), "uc")
    a = UnlearnableClusters(p).poison(train, make_run_context(tmp_path / "a", seed=5))
    b = UnlearnableClusters(p).poison(relabelled, make_run_context(tmp_path / "b", seed=5))
    assert torch.equal(a, b)
    c = UnlearnableClusters(p).poison(train, make_run_context(tmp_path / "c", seed=6))
    assert not torch.equal(a, c)  # another seed, another poison


def test_uc_preflight_names_the_parameter(tmp_path: Path) -> None:
    uc = UnlearnableClusters(name="uc")
    with pytest.raises(ConfigError) as info:
        uc.preflight()
    assert "clip_path" in info.value.line() and "save_pretrained" in info.value.line()
    assert "\n" not in info.value.line()
    empty = UnlearnableClusters(UnlearnableClusters.Params(clip_path=str(tmp_path)), name="uc")
    with pytest.raises(ConfigError, match="holds no saved CLIP model"):
        empty.preflight()


def test_uc_identity_follows_the_weights(clip_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "clip"
    shutil.copytree(clip_dir, copy)
    uc = UnlearnableClusters(UnlearnableClusters.Params(clip_path=str(copy)), name="uc")
    before = uc.input_identity()
    assert json.dumps(before) and "model.safetensors" in before["clip_files"]
    assert uc.input_identity() == before
    weights = copy / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))  # same size, other weights
    after = uc.input_identity()
    assert after["clip_files"]["model.safetensors"] != before["clip_files"]["model.safetensors"]
    assert after["clip_files"]["config.json"] == before["clip_files"]["config.json"]


def test_uc_rejects_bad_settings() -> None:
    for bad in (
        {"eps": 0},
        {"num_clusters": 1},
        {"num_clusters": 4, "target_offset": 4},
        {"epochs": 0},
    ):
        with pytest.raises(ConfigError):
            parse_params(UnlearnableClusters.Params, bad, "uc")


def test_registered_with_a_family() -> None:
    registry = get_registry()
    for name in ("uc", "14a"):
        assert registry.get("poisoner", name).meta.get("family") == "generative"
        # they need local weights the user names, so `-p all` plans without them
        assert registry.left_out_of_all("poisoner", name) == "hidden"
        assert name in registry.select("poisoner", ["family:generative"])


# --------------------------------------------------------------------------------------- 14A

SMOKE_14A = OneForAll.presets["smoke"]


def oneforall(clip_dir: Path, **extra: object) -> OneForAll:
    p = parse_params(OneForAll.Params, {**SMOKE_14A, "clip_path": str(clip_dir), **extra}, "14a")
    return OneForAll(p, name="14a")


def test_14a_keeps_the_contract_on_a_tiny_clip(clip_dir: Path, tmp_path: Path) -> None:
    params = {**SMOKE_14A, "clip_path": str(clip_dir)}
    poisoned = check_poisoner(OneForAll, params=params, workdir=tmp_path)
    clean = make_imageset(per_class=10, num_classes=4)
    delta = (poisoned.images.float() - clean.images.float()) / 255
    norms = delta.flatten(1).norm(dim=1)
    eps = OneForAll.Params().eps
    assert float(norms.max()) <= eps + 0.5 / 255 * delta[0].numel() ** 0.5
    assert float(norms.median()) > 0.8 * eps  # rescaled to the budget, clipping aside


def test_14a_is_label_agnostic_on_the_target(clip_dir: Path, tmp_path: Path) -> None:
    train = make_imageset(per_class=4, num_classes=4)
    shuffled = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))
    relabelled = type(train)(train.images, train.labels[shuffled], train.classes, train.name)
    ctx = make_run_context(tmp_path / "a", seed=5, owner=oneforall(clip_dir))
    a = oneforall(clip_dir).poison(train, ctx)
    b = oneforall(clip_dir).poison(relabelled, ctx)  # the cached generator, other labels
    assert torch.equal(a, b)
    fresh = make_run_context(tmp_path / "b", seed=6, owner=oneforall(clip_dir))
    assert not torch.equal(a, oneforall(clip_dir).poison(train, fresh))


def test_14a_concepts_and_loss(clip_dir: Path, tmp_path: Path) -> None:
    names = tmp_path / "index.json"
    names.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    poisoner = oneforall(clip_dir, concept_names=str(names))
    assert poisoner.concepts(("n01440764", "n01443537")) == ["tench", "goldfish"]
    assert oneforall(clip_dir).concepts(("ankle_boot", "t-shirt/top")) == [
        "ankle boot",
        "t-shirt/top",
    ]
    with pytest.raises(ConfigError, match="WordNet ids"):
        oneforall(clip_dir).concepts(("n01440764", "n01443537"))
    # the loss: far_weight / mean s(far) + mean over near of mean s(near)
    text = torch.eye(3)
    feats = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    near = torch.tensor([[0, 1, 2], [1, 2, 0]])
    far = torch.tensor([1, 2])
    s_far = (feats @ text[far].T).mean()
    s_near = sum((feats @ text[near[:, j]].T).mean() for j in range(3)) / 3
    loss = poisoner.concept_loss(feats, text, near, far)
    assert torch.isclose(loss, 0.1 / s_far + s_near)


def test_14a_preflight_and_bounds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        OneForAll(name="14a").preflight()
    assert "clip_path" in info.value.line() and "\n" not in info.value.line()
    for bad in ({"eps": 0}, {"top_k": 0}, {"prompt": "no slot"}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            parse_params(OneForAll.Params, bad, "14a")
    assert OneForAll(name="14a").requires()[0].name == "imagenet-subset"


def test_the_clip_matrix_resolves_once_clip_path_is_given(clip_dir: Path, tmp_path: Path) -> None:
    from ueb.config import build_config, load_matrix_file
    from ueb.plan import resolve

    matrix = Path(__file__).parents[1] / "benchmarks" / "matrices" / "clip-attacks.toml"
    values = load_matrix_file(matrix)
    with pytest.raises(ConfigError, match="clip_path"):  # the placeholder is no folder
        resolve(build_config(values, {}), get_registry(), load_data=False)
    names = tmp_path / "index.json"
    names.write_text(json.dumps({"0": ["n01440764", "tench"]}))
    local = {"clip_path": str(clip_dir)}
    flags = {"params": {"uc": local, "14a": {**local, "concept_names": str(names)}}}
    plan = resolve(build_config(values, flags), get_registry(), load_data=False)
    assert plan.poisoners == ("clean", "uc", "14a") and len(plan.countermeasures) == 14
    assert "clip_files" in plan.specs[("poisoner", "uc")].inputs
