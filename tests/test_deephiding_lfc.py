"""Deep Hiding at smoke scale: LFC in the paper's balance, a DH(S) that is sample-wise in
substance, the loss curve and the facts a record needs; the paper profile on SIG's generator."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from ueb_deephiding.poisoner import OFFLINE_CAVEAT, DeepHiding

from ueb.integrity import check_poison
from ueb.registry import get_registry
from ueb.testing import make_imageset, make_run_context


@pytest.fixture(scope="module")
def smoke_dhs(tmp_path_factory):
    """DH(S) with the smoke preset on a 4-class set (the hider is trained once, here)."""
    from ueb.profile import load_profile

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = make_imageset(per_class=8, num_classes=4, size=16)
        root = tmp_path_factory.mktemp("dh-lfc")
        ctx = make_run_context(root, seed=0, training=load_profile("smoke").training)
        dh = get_registry().create("poisoner", "deephiding-s", DeepHiding.presets["smoke"])
        out = dh.poison(train, ctx)
    finally:
        torch.set_num_threads(before)
    return train, dh, out


def test_lfc_is_in_the_papers_balance_at_the_end_of_hider_training(smoke_dhs):
    """Appendix A.2.1: w3 = 1e-4 because L_conc is about 1000x the other terms, so that
    w3 L_conc weighs about as much as w1 L_freq + w2 L_reveal."""
    _, dh, _ = smoke_dhs
    facts = dh.report()
    final = facts["hider_final_losses"]
    p = dh.params
    other = p.w_freq * final["freq"] + p.w_reveal * final["reveal"]
    assert final["conc"] > 500 * (final["freq"] + final["reveal"])  # ~3 orders, unweighted
    assert 0.1 <= p.w_conc * final["conc"] / other <= 10
    assert facts["hider_loss_balance"] == pytest.approx(p.w_conc * final["conc"] / other)


def test_every_loss_term_is_recorded_through_training(smoke_dhs):
    _, dh, _ = smoke_dhs
    curve = dh.report()["hider_loss_curve"]
    assert set(curve) == {"step", "total", "hide", "freq", "reveal", "conc"}
    n = len(curve["step"])
    assert 10 <= n <= 50 and all(len(v) == n for v in curve.values())
    assert curve["step"][-1] == dh.params.iterations
    assert curve["step"] == sorted(curve["step"])
    assert curve["reveal"][-1] < curve["reveal"][0] / 2  # the hider learned to hide
    assert all(c > 0 for c in curve["conc"])  # LFC was on throughout


def test_smoke_dhs_is_sample_wise_past_clipping(smoke_dhs):
    train, dh, out = smoke_dhs
    poisoned, stats = check_poison(train, out, dh.budget(), True, "deephiding-s")
    assert stats["linf_max"] <= 8 / 255 + 0.5 / 255 + 1e-7
    shares = dh.report()["perturbation_variance_shares"]
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-9)
    assert shares["hidden_image"] > 0.05  # the hidden image, not only the class, shapes it


def test_the_facts_say_where_the_hidden_images_came_from(smoke_dhs):
    import hashlib

    _, dh, out = smoke_dhs
    facts = dh.report()
    assert facts["caveat"].startswith("hidden images are clean next-class")
    stored = out.clamp(0, 1).mul(255).round().to(torch.uint8)
    assert facts["poison_sha256"] == hashlib.sha256(stored.numpy().tobytes()).hexdigest()
    offline = get_registry().create("poisoner", "deephiding", {"sig_backend": "offline"})
    assert offline.caveat({"backend": "offline"}) == OFFLINE_CAVEAT
    assert offline.caveat({"backend": "diffusers"}) == ""


def test_the_paper_profile_without_diffusion_weights_stops_before_any_work(tmp_path):
    from ueb.testing import write_cifar_archive

    archive = write_cifar_archive(tmp_path / "data", per_class=1, test_per_class=1)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "ueb.cli", "run", "--profile", "paper", "-p", "deephiding"]
    cmd += ["-c", "vanilla", "--data-root", str(archive.parent), "--cache-dir", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line
    for needed in ("deephiding.sig_sd_dir", "deephiding.sig_controlnet_dir", "sig_backend=offline"):
        assert needed in line
    assert "Stable Diffusion" in line and "ControlNet" in line
    assert not (cache / "artifacts").exists() and not (cache / "poisons").exists()
