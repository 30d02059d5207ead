"""APBench's attacks (DC, NTGA, HYPO, UCL, TUE): the conformance kit at smoke scale on small
data, and the properties each algorithm must have (what its update lowers or raises, what it
leaves alone), plus NTGA's pipeline without JAX."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_docs_params import check_text
from ueb_attacks_apbench import ntk
from ueb_attacks_apbench.csd import csd_loss
from ueb_attacks_apbench.dc import DeepConfusion
from ueb_attacks_apbench.hypo import Hypocritical
from ueb_attacks_apbench.ntga import NeuralTangentGeneralization
from ueb_attacks_apbench.tue import TransferableUnlearnable
from ueb_attacks_apbench.ucl import ContrastivePoisoning
from ueb_attacks_apbench.unet import UNet

from ueb.config import load_matrix_file
from ueb.errors import ConfigError
from ueb.integrity import IntegrityError, check_poison, check_sample_wise
from ueb.params import parse_params
from ueb.registry import get_registry
from ueb.testing import check_poisoner, make_imageset, make_run_context

REPO = Path(__file__).parent.parent
NAMES = ["dc", "ntga", "hypo", "ucl", "ucl-class", "tue"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors run fastest on one thread (and the suite shares its cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smoke(cls, **extra):
    return {**cls.presets["smoke"], **extra}


def build(cls, **params):
    return cls(parse_params(cls.Params, params, cls.__name__))


SMALL = make_imageset(per_class=6, num_classes=4, size=16)


# --------------------------------------------------------------------------- registration


def test_registered_with_families_and_ntga_out_of_all():
    registry = get_registry()
    families = {n: registry.get("poisoner", n).meta.get("family") for n in NAMES}
    assert families == {
        "dc": "generative", "ntga": "error-maximising", "hypo": "error-minimising",
        "ucl": "contrastive", "ucl-class": "contrastive", "tue": "contrastive",
    }  # fmt: skip
    assert registry.get("poisoner", "ntga").meta.get("hidden_from_all") is True
    assert registry.get("poisoner", "ucl-class").defaults == {"mode": "class"}
    assert "ntga" not in registry.select("poisoner", ["all"])
    assert {"dc", "hypo", "ucl", "ucl-class", "tue"} <= set(registry.select("poisoner", ["all"]))


# --------------------------------------------------------------------------- conformance

KIT = {
    "hypo": (Hypocritical, {}),
    "ucl": (ContrastivePoisoning, {"batch_size": 8}),
    "ucl-class": (
        ContrastivePoisoning,
        {"mode": "class", "batch_size": 8},
    ),
    "tue": (TransferableUnlearnable, {}),
}


@pytest.mark.parametrize("name", sorted(KIT))
def test_conformance_at_smoke_scale(name, tmp_path):
    cls, extra = KIT[name]
    poisoned = check_poisoner(cls, params=smoke(cls, **extra), data=SMALL, workdir=tmp_path)
    delta = poisoned.float01() - SMALL.float01()
    assert float(delta.abs().max()) <= 8 / 255 + 0.5 / 255
    assert float(delta.abs().max()) >= 2 / 255  # not an empty perturbation


def test_dc_conforms_on_the_kits_data(tmp_path):
    """DC's generator needs a few dozen updates before its eval-mode output varies per image."""
    check_poisoner(DeepConfusion, params=smoke(DeepConfusion), workdir=tmp_path)


@pytest.mark.parametrize("cls", [Hypocritical, TransferableUnlearnable])
def test_another_seed_gives_another_poison(cls, tmp_path):
    a = build(cls, **smoke(cls)).poison(SMALL, make_run_context(tmp_path / "a", seed=0))
    b = build(cls, **smoke(cls)).poison(SMALL, make_run_context(tmp_path / "b", seed=1))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (Hypocritical, {"eps": 0.0}),
        (Hypocritical, {"steps": 0}),
        (ContrastivePoisoning, {"batch_size": 1}),
        (ContrastivePoisoning, {"jitter_p": 1.5}),
        (TransferableUnlearnable, {"ssl_weight": 0.0, "csd_weight": 0.0}),
        (DeepConfusion, {"atk_lr": 0.0}),
        (NeuralTangentGeneralization, {"block_size": 1}),
    ],
)
def test_out_of_range_parameters_are_rejected(cls, bad):
    with pytest.raises(ConfigError):
        parse_params(cls.Params, bad, cls.__name__)


# --------------------------------------------------------------------------- HYPO


def test_hypo_lowers_the_crafting_models_loss_and_reuses_it(tmp_path):
    hypo = build(Hypocritical, **smoke(Hypocritical))
    ctx = make_run_context(tmp_path, owner=hypo)
    poisoned = hypo.poison(SMALL, ctx)
    model = hypo.crafting_model(SMALL, ctx)  # the cached crafting model, not a new one
    assert len(list(ctx.artifacts.root.glob("hypo-crafting/*/manifest.json"))) == 1
    with torch.no_grad():
        clean = F.cross_entropy(model(SMALL.float01()), SMALL.labels)
        after = F.cross_entropy(model(poisoned), SMALL.labels)
    assert float(after) < float(clean)
    assert hypo.report()["crafting_error_poisoned"] <= hypo.report()["crafting_error_clean"]


# --------------------------------------------------------------------------- UCL


def test_ucl_delta_update_lowers_the_contrastive_loss_of_a_fixed_encoder():
    from torch import nn
    from ueb_attacks_apbench.contrastive import Encoder, SimCLRViews

    from ueb.nn import Classifier

    # a larger budget and a plain random conv net, so one pass moves the loss well above noise
    ucl = build(
        ContrastivePoisoning, **smoke(ContrastivePoisoning, eps=0.3, step_size=0.5, pgd_steps=4)
    )
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    )
    encoder = Encoder(Classifier(backbone, 64, 4), 32).eval()
    for q in encoder.parameters():
        q.requires_grad_(False)
    views = SimCLRViews(16, (0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8, 0.2)
    x, y = SMALL.float01(), SMALL.labels
    delta = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    before = delta.clone()

    def loss_of(d: torch.Tensor) -> float:
        aug = torch.Generator().manual_seed(7)  # the same augmentations for both
        with torch.no_grad():
            return float(ucl._loss(encoder, views, x, d, aug))

    ucl._update_delta(encoder, views, x, y, delta, torch.Generator().manual_seed(2),
                      torch.Generator().manual_seed(3), steps=1, bs=len(x))  # fmt: skip
    assert float(delta.abs().max()) <= 1.0
    assert not torch.equal(delta, before)
    assert loss_of(delta) < loss_of(before) - 0.05


def test_ucl_class_wise_keeps_one_delta_per_class(tmp_path):
    ucl = build(ContrastivePoisoning, **smoke(ContrastivePoisoning, mode="class"))
    ctx = make_run_context(tmp_path, owner=ucl)
    poisoned = ucl.poison(SMALL, ctx)
    (stored,) = ctx.artifacts.root.glob("ucl-delta/*/tensor.pt")
    delta = torch.load(stored)
    assert delta.shape == (SMALL.num_classes, *SMALL.images.shape[1:])
    expected = (SMALL.float01() + 8 / 255 * delta[SMALL.labels].clamp(-1, 1)).clamp(0, 1)
    assert torch.allclose(poisoned, expected)


# --------------------------------------------------------------------------- TUE


def test_csd_is_small_for_separated_classes_and_zero_for_one():
    labels = torch.arange(4).repeat_interleave(5)
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(20, 8, generator=gen)
    apart = spread + 50 * torch.eye(4, 8)[labels]
    assert float(csd_loss(apart, labels)) < 0.1 * float(csd_loss(spread, labels))
    assert float(csd_loss(spread, torch.zeros(20, dtype=torch.long))) == 0.0
    # the spreads are constants: only the class centres receive a gradient
    points = spread.clone().requires_grad_(True)
    csd_loss(points, labels).backward()
    per_class = torch.stack([points.grad[labels == k].std(0) for k in range(4)])
    assert float(per_class.max()) < 1e-6


def test_tue_noise_becomes_class_separable_without_an_encoder(tmp_path):
    tue = build(TransferableUnlearnable, **smoke(TransferableUnlearnable, epochs=2))
    assert not tue.trains_encoder  # the official SimCLR setting: ssl_weight 0
    x = SMALL.float01()
    poisoned = tue.poison(SMALL, make_run_context(tmp_path, owner=tue))
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 8 / 255
    assert tue.report()["csd_whole_set"] < 0.5 * float(csd_loss(start, SMALL.labels))
    assert tue.report()["encoder_trained"] is False
    assert float((poisoned - x).abs().max()) <= 8 / 255 + 1e-6


def test_tue_under_csd_alone_is_class_wise_in_substance_and_says_so(tmp_path):
    """At the official step count (20 signed steps of 0.8/255 per batch) CSD alone gives every
    image of a class one pattern wherever clipping did not act, so the poisoner must not claim
    to be sample-wise; with the contrastive term it does."""
    tue = build(TransferableUnlearnable, **smoke(TransferableUnlearnable, epochs=2, pgd_steps=20))
    poisoned = tue.poison(SMALL, make_run_context(tmp_path, owner=tue))
    u8 = (poisoned * 255).round().to(torch.uint8)
    with pytest.raises(IntegrityError, match="one pattern"):
        check_sample_wise(SMALL.with_images(SMALL.uint8()), u8, "tue", tue.budget())
    assert tue.sample_wise is False
    check_poison(SMALL, poisoned, tue.budget(), tue.sample_wise, "tue")  # its declaration holds
    assert build(TransferableUnlearnable, ssl_weight=1.0).sample_wise is True


def test_tue_with_the_contrastive_term_trains_its_encoder(tmp_path):
    tue = build(
        TransferableUnlearnable, **smoke(TransferableUnlearnable, ssl_weight=1.0, pgd_steps=1)
    )
    tue.poison(SMALL, make_run_context(tmp_path, owner=tue))
    facts = tue.report()
    assert facts["encoder_trained"] is True and facts["contrastive_loss_model"] > 0


# --------------------------------------------------------------------------- DC


def test_unet_keeps_odd_sizes_and_channels_in_range():
    torch.manual_seed(0)
    net = UNet(1, 4).eval()
    with torch.no_grad():
        out = net(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 1, 28, 28)
    assert float(out.abs().max()) <= 1.0


def test_dc_generator_step_moves_only_the_generator(tmp_path):
    dc = build(DeepConfusion, **smoke(DeepConfusion))
    ctx = make_run_context(tmp_path, owner=dc)
    cls = dc._classifier(ctx, SMALL, 0)
    torch.manual_seed(0)
    tgt = UNet(3, 4)
    opt = torch.optim.Adam(tgt.parameters(), lr=1e-2)
    cls_before = {k: v.clone() for k, v in cls.named_parameters()}
    tgt_before = {k: v.clone() for k, v in tgt.named_parameters()}
    dc._generator_step(tgt, opt, cls, SMALL.float01()[:8], SMALL.labels[:8])
    assert all(torch.equal(cls_before[k], v) for k, v in cls.named_parameters())
    assert any(not torch.equal(tgt_before[k], v) for k, v in tgt.named_parameters())


# --------------------------------------------------------------------------- NTGA


def test_ntga_preflight_names_the_extra_when_jax_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        ntk.importlib.util, "find_spec", lambda n, *a: None if n == "jax" else real(n, *a)
    )
    ntga = build(NeuralTangentGeneralization)
    with pytest.raises(ConfigError) as err:
        ntga.preflight()
    line = err.value.line()
    assert "jax" in line and "pip install 'ueb[ntga]'" in line and "\n" not in line
    with pytest.raises(ConfigError):  # and poison() stops before any work
        ntga.poison(SMALL, None)  # type: ignore[arg-type]


def test_ntga_preflight_names_a_jax_that_neural_tangents_cannot_import_with(monkeypatch):
    """Both packages found, but the import fails (a neural-tangents built for an older JAX):
    one line naming the extra, before any work, not a traceback mid-run."""
    monkeypatch.setattr(ntk, "missing_packages", lambda: [])
    monkeypatch.setitem(sys.modules, "neural_tangents", None)  # makes the import raise
    with pytest.raises(ConfigError) as err:
        build(NeuralTangentGeneralization).preflight()
    line = err.value.line()
    assert "cannot import neural-tangents" in line and "pip install 'ueb[ntga]'" in line
    assert "\n" not in line


def test_ntga_loads_torchs_native_libraries_before_neural_tangents(tmp_path):
    """In a fresh process (where nothing has imported torch._dynamo yet) the preflight must
    load torch's lazily imported natives before neural-tangents brings in jaxlib and
    TensorFlow: in the other order torch's first optimiser crashes the process."""
    fake = tmp_path / "neural_tangents"
    fake.mkdir()
    (fake / "__init__.py").write_text("import sys\nORDER_OK = 'torch._dynamo' in sys.modules\n")
    script = (
        "import sys\n"
        "from ueb_attacks_apbench import ntk\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "ntk.missing_packages = lambda: []\n"
        "ntk.require_jax()\n"
        "import neural_tangents\n"
        "print('order ok' if neural_tangents.ORDER_OK else 'jax side first')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "order ok"


def test_ntga_pgd_ascends_the_gradient_within_the_ball(tmp_path):
    ntga = build(NeuralTangentGeneralization, block_size=10, val_size=7, val_batch=3)
    direction = np.sign(np.random.default_rng(0).standard_normal((16, 16, 3)))
    seen: list[int] = []

    def grad_fn(xb, yb, x_val, y_val):  # a linear objective: ascent moves along `direction`
        seen.append(len(xb))
        assert len(x_val) == 6 and y_val.shape == (6, 4) and yb.shape == (len(xb), 4)
        return np.broadcast_to(direction, xb.shape).copy()

    noise = ntga.perturb(SMALL, make_run_context(tmp_path), grad_fn)
    assert sorted(seen[:: ntga.params.nb_iter]) == [4, 10, 10]  # every image in one block
    x = SMALL.float01()
    expected = (x + 8 / 255 * torch.from_numpy(direction).permute(2, 0, 1).float()).clamp(0, 1) - x
    assert torch.allclose(noise, expected, atol=1e-6)
    assert ntga.report() == {"blocks": 3, "validation_images": 6, "model": "cnn"}


def test_ntga_validation_split_follows_the_seed():
    ntga = build(NeuralTangentGeneralization, val_size=8, val_batch=4)
    a, b = ntga.validation_split(SMALL, 0), ntga.validation_split(SMALL, 1)
    assert len(a) == len(set(a.tolist())) == 8
    assert not np.array_equal(a, b)
    assert np.array_equal(a, ntga.validation_split(SMALL, 0))


# --------------------------------------------------------------------------- docs, matrix


def test_docs_tables_hold_the_defaults_and_presets():
    checker = check_text(
        (REPO / "docs/poisoners-apbench.md").read_text(), "docs/poisoners-apbench.md"
    )
    assert not checker.problems, "\n".join(checker.problems)
    assert checker.checked >= 40


def test_matrix_resolves_and_leaves_out_only_ntga():
    from ueb.config import build_config
    from ueb.plan import resolve

    values = load_matrix_file(REPO / "benchmarks/matrices/apbench-attacks.toml")
    assert set(values["poisoners"]) == set(NAMES) - {"ntga"}  # ntga: optional JAX, by flag
    assert {"vanilla", "simclr", "jpeg10", "at-linf"} <= set(values["countermeasures"])
    plan = resolve(build_config(values, {}), get_registry(), load_data=False)
    assert len(plan.countermeasures) == 15
