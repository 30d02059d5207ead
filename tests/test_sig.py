"""Semantic Images Generation: text-prompt clustering, the offline bank, caching, Table J metric."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ueb.errors import ConfigError, DataError


def _context(root):
    from ueb.artifacts import ArtifactStore
    from ueb.interfaces import RunContext
    from ueb.profile import load_profile
    from ueb.progress import silent
    from ueb.registry import get_registry, registry_provider

    return RunContext(
        seed=0,
        device="cpu",
        artifacts=ArtifactStore(root),
        progress=silent(),
        training=load_profile("smoke").training,
        provider=registry_provider(get_registry()),
    )


@pytest.fixture(scope="module")
def sig_ctx(tmp_path_factory):
    """One artifact store for the module, so the corpus is embedded once."""
    return _context(tmp_path_factory.mktemp("sig-artifacts"))


@pytest.fixture(scope="module")
def corpus_embeddings(sig_ctx):
    """The built-in corpus through MiniLM, cached in the module's store (the bank reuses it)."""
    from ueb_sig.bank import SigOptions, corpus_embeddings, encoder_identity
    from ueb_sig.tpc import read_corpus

    corpus = read_corpus()
    emb, _ = corpus_embeddings(sig_ctx, SigOptions(), corpus, encoder_identity(SigOptions()))
    return corpus, emb


@pytest.fixture(scope="module")
def offline_bank(sig_ctx):
    from ueb_sig import load_or_build_bank

    return load_or_build_bank(sig_ctx, 6, 12, 32, backend="offline", seed=0)


def test_import_does_not_load_torch():
    code = "import sys, ueb_sig, ueb_sig.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- TPC


def test_farthest_point_order_is_max_min():
    from ueb_sig.tpc import farthest_point_order

    angles = np.deg2rad([0, 10, 20, 90, 100, 180, 185, 270])
    centres = np.stack([np.cos(angles), np.sin(angles)], 1)
    order = farthest_point_order(centres, 4)
    # One centre from each of the four directions, never two neighbours.
    groups = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2, 7: 3}
    assert sorted(groups[i] for i in order) == [0, 1, 2, 3]
    assert order == farthest_point_order(centres, 4)


def test_tpc_picks_k_distinct_prompts_deterministically(corpus_embeddings):
    from ueb_sig.tpc import select_prompts

    corpus, emb = corpus_embeddings
    k = 10
    a = select_prompts(emb, corpus.prompts, k, seed=0)
    b = select_prompts(emb, corpus.prompts, k, seed=0)
    assert a == b
    assert len(a.prompts) == k and len(set(a.prompts)) == k and len(set(a.clusters)) == k
    assert all(corpus.prompts[i] == p for i, p in zip(a.indices, a.prompts, strict=True))
    # Max-min selection: the closest pair of chosen prompts is farther apart than the closest
    # pair of almost every random k-subset of the corpus.
    off = ~np.eye(k, dtype=bool)
    sel = emb[list(a.indices)]
    chosen_max = (sel @ sel.T)[off].max()
    rng = np.random.default_rng(0)
    random_max = []
    for _ in range(200):
        r = emb[rng.choice(len(emb), k, replace=False)]
        random_max.append((r @ r.T)[off].max())
    assert np.mean(np.array(random_max) <= chosen_max) < 0.1
    assert a.min_centre_distance > 0.2


def test_tpc_prompt_is_nearest_its_centre():
    from ueb_sig.tpc import select_prompts

    rng = np.random.default_rng(0)
    pts, names = [], []
    for j in range(4):  # four separated clusters, each symmetric around its own member "c{j}"
        c = np.zeros(8)
        c[j] = 5.0
        d1, d2 = rng.normal(scale=0.4, size=(2, 8))
        for tag, p in (("a", c + d1), (f"c{j}", c), ("b", c - d1), ("d", c + d2), ("e", c - d2)):
            pts.append(p)
            names.append(f"{tag}{j}" if tag in "abde" else tag)
    sel = select_prompts(np.array(pts), names, 4, seed=3, clusters_per_class=1)
    assert sorted(sel.prompts) == ["c0", "c1", "c2", "c3"]


def test_corpus_file_comments_duplicates_and_images(tmp_path):
    from ueb_sig.tpc import read_corpus, select_prompts

    (tmp_path / "a.png").write_bytes(b"")
    f = tmp_path / "c.txt"
    f.write_text("# comment\na dog  on a sofa\n\na dog on a sofa\na cat\ta.png\n")
    c = read_corpus(f)
    assert c.prompts == ("a dog on a sofa", "a cat")
    assert c.images[0] is None and c.images[1] == str((tmp_path / "a.png").resolve())
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="fewer than the 3 classes"):
        select_prompts(np.eye(2), c.prompts, 3)


# --------------------------------------------------------------------------- offline bank


def test_offline_bank_contract(offline_bank):
    b = offline_bank
    assert b.images.shape == (6, 12, 3, 32, 32) and b.images.dtype == torch.uint8
    assert b.backend == "offline" and "offline approximation" in b.recipe["generator"]
    assert "all-MiniLM-L6-v2" in b.encoder
    assert len(set(b.prompts)) == 6 and len(set(b.sources)) == 6
    x = b.images.float()
    # Sample-wise: no two images of a class are equal; classes differ in shape.
    for c in range(6):
        flat = x[c].flatten(1)
        d = torch.cdist(flat, flat)
        assert d[~torch.eye(12, dtype=torch.bool)].min() > 100
    assert b.edges is not None and len({e.tobytes() for e in b.edges}) == 6


def test_offline_images_of_a_class_share_the_shape(offline_bank):
    # Gradient-magnitude maps (shape) correlate more within a class than across classes.
    x = offline_bank.images.float().mean(2)  # (K, M, H, W) grey
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs()[..., :-1, :]
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs()[..., :, :-1]
    g = (gx + gy).flatten(2)
    g = (g - g.mean(-1, keepdim=True)) / g.std(-1, keepdim=True)
    k, m, n = g.shape
    corr = (g.reshape(k * m, n) @ g.reshape(k * m, n).T) / n
    same = torch.block_diag(*[torch.ones(m, m)] * k).bool() & ~torch.eye(k * m, dtype=torch.bool)
    other = ~torch.block_diag(*[torch.ones(m, m)] * k).bool()
    assert corr[same].mean() > corr[other].mean() + 0.15


def test_bank_is_cached_and_reused(sig_ctx, offline_bank, monkeypatch):
    import ueb_sig.offline
    from ueb_sig import load_or_build_bank

    def boom(*a, **k):
        raise AssertionError("the cached bank was rebuilt")

    monkeypatch.setattr(ueb_sig.offline, "render_class", boom)
    again = load_or_build_bank(sig_ctx, 6, 12, 32, backend="offline", seed=0)
    assert again.content_hash == offline_bank.content_hash
    assert torch.equal(again.images, offline_bank.images)
    assert again.path is not None and (again.path / "manifest.json").is_file()
    with pytest.raises(AssertionError, match="rebuilt"):  # a new recipe does build
        load_or_build_bank(sig_ctx, 6, 12, 32, backend="offline", seed=1)


def test_offline_bank_is_deterministic_across_stores(sig_ctx, offline_bank, tmp_path):
    from ueb_sig import load_or_build_bank

    # Share the corpus embeddings (their own cached artifact) so only the bank is rebuilt.
    shutil.copytree(sig_ctx.artifacts.root / "sig-embeddings", tmp_path / "sig-embeddings")
    ctx = _context(tmp_path)
    fresh = load_or_build_bank(ctx, 6, 12, 32, backend="offline", seed=0)
    assert fresh.content_hash == offline_bank.content_hash


def test_bank_save_load_roundtrip_and_tamper(offline_bank, tmp_path):
    from ueb_sig import SemanticBank

    offline_bank.save(tmp_path / "b")
    back = SemanticBank.load(tmp_path / "b")
    assert torch.equal(back.images, offline_bank.images) and back.prompts == offline_bank.prompts
    assert back.encoder == offline_bank.encoder and back.backend == "offline"
    rec = json.loads((tmp_path / "b" / "recipe.json").read_text())
    rec["content_hash"] = "0" * 16
    (tmp_path / "b" / "recipe.json").write_text(json.dumps(rec))
    with pytest.raises(DataError, match="content hash"):
        SemanticBank.load(tmp_path / "b")
    with pytest.raises(DataError, match="not a semantic-image bank"):
        SemanticBank.load(tmp_path)


def test_bad_options_are_one_line_errors(sig_ctx):
    from ueb_sig import load_or_build_bank

    with pytest.raises(ConfigError, match="did you mean|valid options"):
        load_or_build_bank(sig_ctx, 2, 2, 8, backend="offline", render_sise=64)
    with pytest.raises(ConfigError, match="unknown semantic-image backend"):
        load_or_build_bank(sig_ctx, 2, 2, 8, backend="sdxl")


# --------------------------------------------------------------------------- Table J metric


def test_class_similarity_numbers():
    from ueb_sig.similarity import class_similarity

    f = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.2, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    r = class_similarity(f, y)
    m0 = torch.tensor([1.0, 0.1], dtype=torch.float64)
    own = torch.nn.functional.cosine_similarity(f[:2], m0[None]).mean()
    assert r["intra"] == pytest.approx(float(own), abs=1e-9)
    assert r["inter"] == pytest.approx(
        float(
            torch.nn.functional.cosine_similarity(
                m0, torch.tensor([0.55, 0.55], dtype=torch.float64), dim=0
            )
        ),
        abs=1e-9,
    )
    assert r["margin"] == pytest.approx(r["intra"] - r["to_other_means"], abs=1e-9)
    with pytest.raises(DataError):
        class_similarity(f[:2], y[:2])


def test_offline_bank_intra_class_beats_other_classes(sig_ctx, offline_bank):
    from ueb_sig.similarity import bank_similarity

    r = bank_similarity(offline_bank, sig_ctx)  # the registered resnet18, untrained, seeded
    assert r["intra"] > r["to_other_means"]
    # Untrained ReLU features crowd near one direction; centred, the class structure is plain.
    assert r["intra_centred"] > r["to_other_means_centred"] + 0.3
    assert (
        r["classes"] == 6 and r["samples"] == 72 and r["features"].startswith("resnet18 (untrained")
    )
    # The paper's variant: the network first trained on the set it measures (a small one here).
    t = bank_similarity(offline_bank, sig_ctx, victim="fastnet", train_iterations=2)
    u = bank_similarity(offline_bank, sig_ctx, victim="fastnet")
    assert "trained 2 steps" in t["features"] and t["intra_centred"] != pytest.approx(
        u["intra_centred"]
    )


def test_similarity_of_an_imageset(sig_ctx, tiny_set):
    from ueb_sig.similarity import imageset_similarity

    r = imageset_similarity(tiny_set, sig_ctx, victim="fastnet")
    assert 0 < r["intra"] <= 1 and 0 < r["inter"] <= 1 and r["samples"] == len(tiny_set)


# --------------------------------------------------------------------------- commands


def test_commands_write_bank_grid_and_similarity(sig_ctx, corpus_embeddings, tmp_path):
    import typer
    from typer.testing import CliRunner
    from ueb_sig.cli import add_commands

    app = typer.Typer()
    add_commands(app)
    runner = CliRunner()
    shutil.copytree(
        sig_ctx.artifacts.root / "sig-embeddings", tmp_path / "cache" / "sig-embeddings"
    )
    out = tmp_path / "bank"
    r = runner.invoke(
        app,
        [
            "semantic-images",
            "--classes",
            "3",
            "--per-class",
            "4",
            "--size",
            "16",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--cache",
            str(tmp_path / "cache"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (out / "bank.npz").is_file() and (out / "recipe.json").is_file()
    r = runner.invoke(
        app, ["bank-grid", str(out), "--out", str(tmp_path / "g.png"), "--cell", "20"]
    )
    assert r.exit_code == 0, r.output
    from PIL import Image

    # 3 rows, 1 edge column + 4 images, 20 px cells with 2 px gaps
    assert Image.open(tmp_path / "g.png").size == (5 * 22 + 2, 3 * 22 + 2)
    r = runner.invoke(app, ["similarity", str(out), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert {"intra", "inter", "to_other_means", "intra_centred"} <= set(json.loads(r.output))
    r = runner.invoke(app, ["semantic-images", "--out", str(out), "--sd-model", str(tmp_path)])
    assert r.exit_code == 2 and "--backend diffusers" in r.output


def test_offline_images_of_a_class_share_their_signed_pixels(offline_bank):
    """Like SD+ControlNet samples of one prompt and canny map, same-class images are bright and
    dark in the same places (the photo's luminance layout), not only edged alike; they still
    differ locally, and images of different classes are uncorrelated."""
    from ueb_sig.similarity import pixel_similarity

    x, y = offline_bank.flat()
    r = pixel_similarity(x, y)
    assert r["within"] > 0.25 and r["within"] > r["across"] + 0.25
    assert r["within"] < 0.9  # local texture differs from sample to sample
    assert abs(r["across"]) < 0.15
    shuffled = pixel_similarity(
        x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    )
    assert abs(shuffled["within"] - shuffled["across"]) < 0.1  # control: labels carry it
