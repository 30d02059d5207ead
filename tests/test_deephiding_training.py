"""Deep Hiding: hider training (loss goes down, resume, rollback), generation, reveal."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from ueb_deephiding.hidden import next_class
from ueb_deephiding.losses import LossWeights
from ueb_deephiding.training import HiderConfig, load_hider, train_hider

from ueb.registry import get_registry
from ueb.testing import make_imageset

SMALL = HiderConfig(
    blocks=1,
    growth=8,
    iterations=12,
    batch_size=8,
    lr=1e-3,
    weights=LossWeights(w_conc=0.0),
    checkpoint_every=4,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions run faster on one thread, and CPU runs repeat only at one count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_set():
    return make_imageset(per_class=6, num_classes=3, size=16)


def _quiet(*_):
    pass


def test_a_few_iterations_decrease_the_total_loss(small_set, tmp_path):
    cfg = replace(SMALL, iterations=20)
    small_set = make_imageset(per_class=6, num_classes=3, size=8)
    _, summary = train_hider(small_set, next_class(small_set, 4), cfg, tmp_path, log=_quiet)
    import json

    hist = json.loads((tmp_path / "history.json").read_text())["history"]
    first = sum(h["total"] for h in hist[:5]) / 5
    last = sum(h["total"] for h in hist[-5:]) / 5
    assert last < 0.8 * first
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert summary["iterations"] == 20 and summary["rollbacks"] == 0


def test_resume_after_a_kill_is_identical_to_an_uninterrupted_run(small_set, tmp_path):
    groups = next_class(small_set, 4)
    ref, _ = train_hider(small_set, groups, SMALL, tmp_path / "a", log=_quiet)

    class Killed(Exception):
        pass

    def kill(step):
        if step == 8:
            raise Killed

    with pytest.raises(Killed):
        train_hider(small_set, groups, SMALL, tmp_path / "b", log=_quiet, after_checkpoint=kill)
    assert not (tmp_path / "b" / "hider.pt").exists()
    said = []
    resumed, summary = train_hider(small_set, groups, SMALL, tmp_path / "b", log=said.append)
    assert any("resuming hider training from step 8" in s for s in said)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)
    loaded = load_hider(tmp_path / "b" / "hider.pt")
    x = small_set.float01()[:2]
    torch.testing.assert_close(loaded.hide(x, x)[0], resumed.hide(x, x)[0])


def test_non_finite_loss_rolls_back_and_lowers_the_lr(small_set, tmp_path):
    fired = []

    def fault(step, terms):
        if step == 6 and not fired:
            fired.append(step)
            terms["total"] = terms["total"] * float("nan")

    said = []
    _, summary = train_hider(
        small_set, next_class(small_set, 4), SMALL, tmp_path, log=said.append, fault=fault
    )
    assert summary["rollbacks"] == 1 and summary["iterations"] == SMALL.iterations
    assert math.isclose(summary["final_lr"], SMALL.lr * SMALL.rollback_lr_factor)
    assert any("rollback at step 6" in s and "back to step 4" in s for s in said)


def test_training_that_keeps_diverging_stops_with_one_clear_error(small_set, tmp_path):
    from ueb.errors import UebError

    def always(step, terms):
        terms["total"] = terms["total"] * float("inf")

    cfg = replace(SMALL, max_rollbacks=2)
    with pytest.raises(UebError, match="diverged"):
        train_hider(small_set, next_class(small_set, 4), cfg, tmp_path, log=_quiet, fault=always)


# --------------------------------------------------------------------------- the poisoner

TINY = {
    "hidden": "next-class",
    "blocks": 1,
    "growth": 8,
    "iterations": 6,
    "batch_size": 8,
    "per_class": 3,
    "extractor_width": 4,
    "extractor_iterations": 3,
    "checkpoint_every": 3,
    "reveal_check": 8,
}


def test_registered_names_and_defaults(run_context):
    dhc = get_registry().create("poisoner", "deephiding")
    dhs = get_registry().create("poisoner", "deephiding-s")
    assert dhc.params.mode == "class" and not dhc.sample_wise
    assert dhs.params.mode == "sample" and dhs.sample_wise
    assert dhc.params.blocks == 16 and dhc.params.batch_size == 24 and dhc.params.iterations == 5000
    assert math.isclose(dhc.params.lr, 10**-4.5) and dhc.params.w_conc == 1e-4
    assert dhc.budget().norm == "linf" and math.isclose(dhc.budget().eps, 8 / 255)
    soft = get_registry().create("poisoner", "deephiding", {"restriction": "soft"})
    assert soft.budget().norm == "unbounded"


def test_class_and_sample_wise_generation_respect_budget_and_report_psnr(run_context):
    from ueb_deephiding.poisoner import DeepHiding

    from ueb.integrity import check_poison

    train = make_imageset(per_class=6, num_classes=3, size=16)
    smoke = DeepHiding.presets["smoke"]  # a hider that hides: DH(S) is sample-wise in substance
    for name in ("deephiding", "deephiding-s"):
        dh = get_registry().create("poisoner", name, smoke)
        out = dh.poison(train, run_context)
        _, stats = check_poison(train, out, dh.budget(), dh.sample_wise, name)
        assert stats["linf_max"] <= 8 / 255 + 0.5 / 255 + 1e-7
        facts = dh.report()
        # an Linf 8/255 perturbation cannot cost more than 20 log10(255 / 8) = 30.07 dB
        assert facts["psnr_vs_clean_db"] >= 30.0
        assert facts["hidden_source"] == "next-class"
        assert facts["extractor"]["source"] == "trained"
        assert facts["hider_iterations"] == smoke["iterations"]
    # both names share one cached hider (mode is not part of the hider's recipe)
    hiders = [f for f in (run_context.artifacts.root / "deephiding-hider").iterdir() if f.is_dir()]
    assert len(hiders) == 1


def test_soft_restriction_does_not_clip(run_context):
    train = make_imageset(per_class=6, num_classes=3, size=16)
    params = {**TINY, "w_conc": 0.0, "iterations": 30, "lr": 3e-3}
    strict = get_registry().create("poisoner", "deephiding", params).poison(train, run_context)
    soft = (
        get_registry()
        .create("poisoner", "deephiding", {**params, "restriction": "soft"})
        .poison(train, run_context)
    )
    clean = train.float01()
    assert float((strict - clean).abs().max()) <= 8 / 255 + 1e-6
    assert float((soft - clean).abs().max()) > float((strict - clean).abs().max())


def test_extractor_weights_file_is_used_and_recorded(run_context, tmp_path):
    train = make_imageset(per_class=6, num_classes=3, size=16)
    model = get_registry().create("victim", "resnet18", {"width": 4}).build(3, 16, 3)
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    dh = get_registry().create("poisoner", "deephiding", {**TINY, "extractor_weights": str(path)})
    dh.poison(train, run_context)
    assert dh.report()["extractor"]["source"] == "file"
    missing = get_registry().create(
        "poisoner", "deephiding", {**TINY, "extractor_weights": str(tmp_path / "no.pt")}
    )
    from ueb.errors import ConfigError

    with pytest.raises(ConfigError, match="do not exist"):
        missing.poison(train, run_context)


def test_reveal_recovers_the_hidden_image_better_than_chance(tmp_path):
    from ueb_deephiding.metrics import psnr

    train = make_imageset(per_class=8, num_classes=3, size=8)
    groups = next_class(train, 1)
    cfg = replace(
        SMALL, blocks=2, growth=16, iterations=80, lr=2e-3, batch_size=12, checkpoint_every=1000
    )
    torch.manual_seed(0)
    net, _ = train_hider(train, groups, cfg, tmp_path, log=_quiet)
    x = train.float01()
    hidden = groups.images[train.labels, 0].float() / 255
    with torch.no_grad():
        # the soft-restriction container, on the 8-bit grid: what the INN itself can carry
        ue = net.hide(x, hidden)[0].clamp(0, 1).mul(255).round().div(255)
        _, revealed = net.reveal(ue, generator=torch.Generator().manual_seed(1))
    revealed = revealed.clamp(0, 1)
    right = psnr(revealed, hidden)
    wrong = psnr(revealed, hidden.roll(8, 0))  # another class's hidden image
    assert right > wrong + 3.0


def test_cli_commands_exist_and_reveal_reports_psnr(tmp_path):
    import json

    from typer.testing import CliRunner
    from ueb_deephiding.cli import build_app

    app = build_app()
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"train", "generate", "reveal"} <= names
    args = [
        "reveal",
        "--profile",
        "smoke",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path),
        "--json",
        "-n",
        "8",
    ]
    for k, v in TINY.items():
        args += ["--param", f"{k}={v}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout[result.stdout.index("{") :])
    assert facts["images"] == 8 and math.isfinite(facts["reveal_psnr_db"])
    bad = CliRunner().invoke(
        app, ["train", "--profile", "smoke", "--param", "blockz=2", "--cache-dir", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "did you mean 'blocks'" in bad.output
