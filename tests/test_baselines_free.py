"""The surrogate-free baselines LSP, AR and OPS: budgets after 8-bit rounding, determinism, and
each method's own invariant (see docs/poisoners-surrogate-free.md)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ueb.errors import IntegrityError, UebError
from ueb.imageset import ImageSet
from ueb.integrity import check_poison
from ueb.registry import get_registry
from ueb.testing import make_imageset


def _create(run_context, name: str, **params):
    return get_registry().create("poisoner", name, params)


def _poison(poisoner, train: ImageSet, ctx) -> torch.Tensor:
    """Run the poisoner and the framework's integrity check; the stored uint8 poison."""
    out = poisoner.poison(train, ctx)
    images, _ = check_poison(train, out, poisoner.budget(), poisoner.sample_wise, poisoner.name)
    return images


def _grey_set(
    per_class: int = 6, num_classes: int = 4, size: int = 32, value: int = 128
) -> ImageSet:
    """Flat mid-grey images: no clamping, so the stored delta is the rounded noise itself."""
    n = per_class * num_classes
    images = torch.full((n, 3, size, size), value, dtype=torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return ImageSet(images, labels, tuple(f"c{k}" for k in range(num_classes)))


def _delta(poisoned: torch.Tensor, clean: ImageSet) -> torch.Tensor:
    return (poisoned.to(torch.int16) - clean.uint8().to(torch.int16)).float() / 255.0


# --------------------------------------------------------------------------- OPS


def _official_ops_search(images: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """The official loop (score = mean/std of |c - x| over a class's images and channels)."""
    from ueb_baselines.ops import corner_colours

    data = images.permute(0, 2, 3, 1).double().numpy() / 255
    h, w = data.shape[1:3]
    colours = corner_colours(images.shape[1]).numpy()
    used: list[tuple[int, int]] = []
    picks = []
    for k in range(num_classes):
        x = data[labels.numpy() == k]
        score = np.full((h * w, len(colours)), -np.inf)
        for p in range(h * w):
            r, c = divmod(p, w)
            for v, colour in enumerate(colours):
                if (p, v) in used:
                    continue
                d = np.abs(colour - x[:, r, c, :])
                score[p, v] = d.mean() / d.std()
        p, v = np.unravel_index(np.argmax(score), score.shape)
        used.append((int(p), int(v)))
        picks.append((divmod(int(p), w), int(v), float(score[p, v])))
    return picks


def test_ops_search_equals_the_official_loop_on_random_images():
    from ueb_baselines.ops import search_pixels

    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (45, 3, 6, 5), dtype=torch.uint8, generator=gen)
    labels = torch.arange(3).repeat(15)
    positions, colours, scores = search_pixels(images, labels, 3)
    for k, (pos, colour, score) in enumerate(_official_ops_search(images, labels, 3)):
        assert positions[k] == pos and colours[k] == colour
        assert scores[k] == pytest.approx(score, rel=1e-9)


def test_ops_picks_the_argmax_and_never_reuses_a_position_colour_pair():
    from ueb_baselines.ops import search_pixels

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(60, 200, (40, 3, 4, 4), dtype=torch.uint8, generator=gen)
    labels = torch.arange(2).repeat_interleave(20)
    # pixel (1, 2): nearly constant dark in both classes, so white there scores best for both
    images[:, :, 1, 2] = 20 + torch.randint(0, 3, (40, 1), generator=gen).to(torch.uint8)
    # pixel (3, 0): nearly constant bright in class 1 only (black there is its runner-up)
    images[20:, :, 3, 0] = 230 + torch.randint(0, 5, (20, 1), generator=gen).to(torch.uint8)
    positions, colours, _ = search_pixels(images, labels, 2)
    assert positions[0] == (1, 2) and colours[0] == 7  # white = (1, 1, 1)
    assert (positions[1], colours[1]) != (positions[0], colours[0])
    assert positions[1] == (3, 0) and colours[1] == 0  # black


def test_ops_changes_exactly_one_pixel_per_image_at_one_position_per_class(run_context):
    train = make_imageset(per_class=10, num_classes=4)
    ops = _create(run_context, "ops")
    assert ops.budget().norm == "l0" and ops.budget().eps == 1 and not ops.sample_wise
    poisoned = _poison(ops, train, run_context)
    delta = _delta(poisoned, train)
    changed = (delta != 0).any(dim=1)  # (N, H, W) changed positions
    assert torch.equal(changed.flatten(1).sum(1), torch.ones(len(train), dtype=torch.long))
    pairs = set()
    seen = []
    for k in range(train.num_classes):
        mine = changed[train.labels == k]
        assert bool((mine == mine[0]).all()), f"class {k} changes more than one position"
        row, col = (int(v) for v in torch.nonzero(mine[0])[0])
        values = poisoned[train.labels == k][:, :, row, col]
        assert bool((values == values[0]).all()) and set(values[0].tolist()) <= {0, 255}
        pairs.add((row, col, tuple(values[0].tolist())))
        seen.append([row, col])
    assert len(pairs) == train.num_classes
    assert ops.report()["ops_positions"] == seen
    json.dumps(ops.report(), allow_nan=False)


def test_ops_never_picks_a_pixel_that_already_has_the_colour():
    """Fashion-MNIST's zero border: 0/0 (black on black) must not win; white there must."""
    from ueb_baselines.ops import search_pixels

    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8, generator=gen)
    images[:, :, 0, :] = 0  # a constant black first row, in every class
    labels = torch.arange(3).repeat(10)
    positions, colours, scores = search_pixels(images, labels, 3)
    for (row, _), colour, score in zip(positions, colours, scores, strict=True):
        assert row == 0 and colour != 0 and math.isinf(score)


def test_ops_is_deterministic(run_context):
    train = make_imageset(per_class=6, num_classes=3)
    ops = _create(run_context, "ops")
    assert torch.equal(ops.poison(train, run_context), ops.poison(train, run_context))


def test_ops_pixel_does_not_survive_a_median_filter():
    """ISS-style: OPS is fragile to median filtering (a lone pixel is an outlier)."""
    from ueb_baselines.ops import search_pixels

    x = torch.linspace(60, 180, 16).round().to(torch.uint8)
    images = x[None, None, :, None].expand(12, 3, 16, 16).contiguous()  # smooth vertical ramp
    labels = torch.arange(2).repeat(6)
    positions, colours, _ = search_pixels(images, labels, 2)
    poisoned = images.clone()
    for k, ((r, c), _) in enumerate(zip(positions, colours, strict=True)):
        poisoned[labels == k, :, r, c] = 0 if colours[k] == 0 else 255

    def median3(t):
        p = F.pad(t.float(), (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
        return p.reshape(*p.shape[:4], 9).median(-1).values

    assert float((median3(poisoned) - median3(images)).abs().max()) <= 8


# --------------------------------------------------------------------------- LSP


def test_lsp_defaults_are_the_official_settings(run_context):
    lsp = _create(run_context, "lsp")
    assert lsp.params.eps == pytest.approx(6 / 255) and lsp.params.class_sep == 10.0
    assert lsp.sample_wise  # official: one cluster point per image
    assert lsp.budget().norm == "l2" and lsp.budget().eps == pytest.approx(
        math.sqrt(3072) * 6 / 255
    )
    assert lsp.budget().eps == pytest.approx(1.3041, abs=1e-4)


def test_lsp_budget_holds_after_rounding_and_noise_has_the_declared_norm(run_context):
    train = make_imageset(per_class=8, num_classes=4)
    lsp = _create(run_context, "lsp")
    _poison(lsp, train, run_context)  # raises IntegrityError if the budget is broken
    grey = _grey_set()
    delta = _delta(_poison(lsp, grey, run_context), grey)
    norms = delta.flatten(1).norm(dim=1)
    # rounding moves each of the 3072 values by at most half a level
    assert torch.allclose(
        norms, torch.full_like(norms, lsp.budget().eps), atol=0.5 / 255 * math.sqrt(3072)
    )
    assert lsp.report()["lsp_features"] == 48 and lsp.report()["lsp_patch_size"] == 8


def test_lsp_noise_is_patchwise_constant_and_linearly_separable():
    from ueb_baselines.lsp import LinearSeparablePerturbations, expand_points

    lsp = LinearSeparablePerturbations()
    counts = [30, 30, 30, 30]
    points = lsp.draw_points(counts, 48, seed=0)
    noise = torch.cat([expand_points(p, 3, 32, 32, 8, 1.3) for p in points])
    labels = torch.arange(4).repeat_interleave(30)
    assert torch.allclose(noise.flatten(1).norm(dim=1), torch.full((120,), 1.3))
    blocks = noise.view(120, 3, 4, 8, 4, 8)
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    # least squares on one-hot targets: a linear classifier separates the noise perfectly
    x = torch.cat([noise.flatten(1), torch.ones(120, 1)], 1).double()
    w = torch.linalg.lstsq(x, F.one_hot(labels, 4).double()).solution
    assert bool(((x @ w).argmax(1) == labels).all())
    # ... and the noise of one class differs between images (sample-wise, as the official code)
    assert not torch.allclose(noise[0], noise[1])


def test_lsp_class_wise_variant_is_constant_per_class(run_context):
    grey = _grey_set()
    lsp = _create(run_context, "lsp", class_wise=True)
    assert not lsp.sample_wise
    delta = _delta(_poison(lsp, grey, run_context), grey)
    for k in range(grey.num_classes):
        d = delta[grey.labels == k]
        assert bool((d == d[0]).all())
    assert not torch.equal(delta[0], delta[-1])


def test_lsp_is_deterministic_under_a_seed(run_context):
    train = make_imageset(per_class=5, num_classes=3)
    lsp = _create(run_context, "lsp")
    a = lsp.poison(train, run_context)
    assert torch.equal(a, lsp.poison(train, run_context))
    other = dataclasses.replace(run_context, seed=1)
    assert not torch.equal(a, lsp.poison(train, other))


def test_lsp_norm_parameter_and_other_image_sizes(run_context):
    from ueb_baselines.lsp import lsp_patch

    assert lsp_patch(None, "official", 32) == 8 and lsp_patch(None, "official", 224) == 56
    assert lsp_patch(None, "apbench", 224) == 32 and lsp_patch(None, "apbench", 32) == 8
    lsp = _create(run_context, "lsp", norm=1.0)
    grey = _grey_set(per_class=3, num_classes=3, size=40)
    delta = _delta(_poison(lsp, grey, run_context), grey)
    assert lsp.budget().eps == 1.0
    assert lsp.report()["lsp_grid"] == [4, 4] and lsp.report()["lsp_patch_size"] == 10
    assert float(delta.flatten(1).norm(dim=1).max()) <= 1.0 + 0.5 / 255 * math.sqrt(
        delta[0].numel()
    )


def test_lsp_default_norm_follows_the_image_size(run_context):
    lsp = _create(run_context, "lsp")
    grey = _grey_set(per_class=2, num_classes=2, size=16)
    _poison(lsp, grey, run_context)
    assert lsp.budget().eps == pytest.approx(math.sqrt(3 * 16 * 16) * 6 / 255)


def test_lsp_noise_survives_a_blur_better_than_pixel_noise():
    """ISS-style sanity: patch-constant noise is low-frequency; a 3x3 mean filter keeps most of it."""
    from ueb_baselines.lsp import LinearSeparablePerturbations, expand_points

    pts = LinearSeparablePerturbations().draw_points([10, 10], 48, seed=0)
    noise = torch.cat([expand_points(p, 3, 32, 32, 8, 1.0) for p in pts])
    kept = F.avg_pool2d(noise, 3, 1, 1, count_include_pad=False).flatten(1).norm(dim=1)
    white = torch.randn_like(noise)
    white = white / white.flatten(1).norm(dim=1)[:, None, None, None]
    kept_white = F.avg_pool2d(white, 3, 1, 1, count_include_pad=False).flatten(1).norm(dim=1)
    assert float(kept.min()) > 0.8 and float(kept_white.max()) < 0.5


# --------------------------------------------------------------------------- AR


def _raster_ar(coefs: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The official definition: raster loop, each value the 3x3 causal window times the taps."""
    x = start.clone()
    for m in range(len(x)):
        for i in range(x.shape[2] - 2):
            for j in range(x.shape[3] - 2):
                window = x[m, :, i : i + 3, j : j + 3]
                x[m, :, i + 2, j + 2] = (window * coefs[m]).sum(dim=(1, 2))
    return x


def test_ar_diagonal_recursion_equals_the_raster_loop():
    from ueb_baselines.ar import ar_generate, sample_coefficients

    gen = torch.Generator().manual_seed(0)
    coefs = torch.rand(3, 3, 3, 3, generator=gen)  # positive taps: a stable process
    coefs[:, :, 2, 2] = 0
    coefs = coefs / coefs.sum(dim=(2, 3), keepdim=True)
    start = torch.randn(3, 3, 11, 9, generator=gen)
    assert torch.allclose(ar_generate(coefs, start), _raster_ar(coefs, start), rtol=1e-5, atol=1e-6)
    b = sample_coefficients(5, 3, gen)
    assert torch.allclose(b.sum(dim=(2, 3)), torch.ones(5, 3)) and bool((b[:, :, 2, 2] == 0).all())


def test_ar_search_meets_its_criteria_and_is_seeded():
    from ueb_baselines.ar import ar_generate, matching_filters, responses, search_coefficients

    a = search_coefficients(5, 3, seed=0, required_nm_response=3.0)
    assert torch.equal(
        a.coefficients, search_coefficients(5, 3, seed=0, required_nm_response=3.0).coefficients
    )
    assert not torch.equal(
        a.coefficients, search_coefficients(5, 3, seed=1, required_nm_response=3.0).coefficients
    )
    assert all(r >= 3.0 for r in a.lowest_responses[1:])
    # every kept process is stable: its signals are finite and below the norm bound
    gen = torch.Generator().manual_seed(5)
    sig = ar_generate(a.coefficients.repeat(4, 1, 1, 1), torch.randn(20, 3, 36, 36, generator=gen))[
        :, :, 4:, 4:
    ]
    norms = sig.flatten(1).norm(dim=1)
    assert bool(torch.isfinite(sig).all()) and float(norms.max()) <= 50 * 3
    # a process's own filter annihilates its signal; the others respond
    r = responses(matching_filters(a.coefficients), sig / norms[:, None, None, None])
    assert bool((r.argmin(dim=1) == torch.arange(5).repeat(4)).all())


def test_ar_search_fails_with_one_clear_line_when_nothing_is_found():
    from ueb_baselines.ar import search_coefficients

    with pytest.raises(UebError, match="found .* of 3 processes"):
        search_coefficients(3, 3, seed=0, required_nm_response=1e9, num_samples=300)


def test_ar_poison_budget_sample_wise_and_classes_identifiable(run_context):
    from ueb_baselines.ar import matching_filters, responses

    grey = _grey_set(per_class=8, num_classes=4)
    ar = _create(run_context, "ar", required_nm_response=3.0)
    assert ar.sample_wise and ar.budget().norm == "l2" and ar.budget().eps == 1.0
    poisoned = _poison(ar, grey, run_context)  # budget + "differs within a class" checks
    delta = _delta(poisoned, grey)
    norms = delta.flatten(1).norm(dim=1)
    assert float((norms - 1.0).abs().max()) < 0.5 / 255 * math.sqrt(3072)
    coefs = torch.tensor(ar.report()["ar_coefficients"])
    assert coefs.shape == (4, 3, 3, 3) and bool(torch.isfinite(coefs).all())
    # the AR residual identifies each image's class even after 8-bit rounding
    r = responses(matching_filters(coefs), delta)
    assert float((r.argmin(dim=1) == grey.labels).float().mean()) >= 0.9
    # no blank class
    for k in range(4):
        assert float(delta[grey.labels == k].abs().amax()) > 0


def test_ar_noise_has_unit_norm_and_differs_within_a_class():
    from ueb_baselines.ar import generate_noise, matching_filters, responses, search_coefficients

    coefs = search_coefficients(3, 3, seed=2, required_nm_response=3.0).coefficients
    labels = torch.arange(3).repeat_interleave(10)
    noise = generate_noise(coefs, labels, (3, 32, 32), 4, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(noise.flatten(1).norm(dim=1), torch.ones(30), atol=1e-5)
    assert not torch.allclose(noise[0], noise[1])
    assert bool((responses(matching_filters(coefs), noise).argmin(dim=1) == labels).all())


def test_ar_redraws_or_refuses_nan_processes_instead_of_writing_black_images():
    from ueb_baselines.ar import generate_noise

    bad = torch.full((2, 3, 3, 3), 50.0)  # explodes to inf/NaN within a few rows
    bad[:, :, 2, 2] = 0
    with pytest.raises(UebError, match="NaN or blank"):
        generate_noise(
            bad, torch.tensor([0, 1]), (3, 32, 32), 4, 1.0, torch.Generator().manual_seed(0)
        )


def test_ar_is_deterministic_and_caches_its_coefficients(run_context):
    train = make_imageset(per_class=4, num_classes=3)
    ar = _create(run_context, "ar", required_nm_response=3.0)
    a = ar.poison(train, run_context)
    folder = run_context.artifacts.root / "ar-coefficients"
    assert len(list(folder.glob("*/coefficients.json"))) == 1
    assert torch.equal(a, ar.poison(train, run_context))
    b = ar.poison(train, dataclasses.replace(run_context, seed=1))
    assert not torch.equal(a, b)
    json.dumps(ar.report(), allow_nan=False)  # stored with the poison: strict JSON
    fixed = _create(run_context, "ar", required_nm_response=3.0, search_seed=7)
    fixed.poison(train, run_context)
    c0 = fixed.report()["ar_coefficients"]
    fixed.poison(train, dataclasses.replace(run_context, seed=1))
    assert fixed.report()["ar_coefficients"] == c0


def test_ar_default_response_threshold_follows_the_official_sets(run_context):
    ar = _create(run_context, "ar")
    assert ar.required_response(10) == 10.0 and ar.required_response(100) == 3.0


def test_budget_violation_would_be_caught():
    """The integrity check the tests above rely on does fail on an over-budget L2 poison."""
    from ueb.interfaces import Budget

    grey = _grey_set(per_class=2, num_classes=2)
    out = grey.float01() + 0.05
    with pytest.raises(IntegrityError):
        check_poison(grey, out, Budget("l2", 1.0), False, "test")


def test_ops_breaks_ties_with_the_seed():
    from ueb_baselines.ops import search_pixels

    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8, generator=gen)
    images[:, :, :2, :] = 0  # 16 border pixels where white scores +inf for every class
    labels = torch.arange(3).repeat(10)
    first = search_pixels(images, labels, 3)[0]
    assert first == [(0, 0), (0, 1), (0, 2)]
    draws = [
        search_pixels(images, labels, 3, torch.Generator().manual_seed(s))[0] for s in range(4)
    ]
    assert draws[0] == search_pixels(images, labels, 3, torch.Generator().manual_seed(0))[0]
    assert len({tuple(d) for d in draws}) > 1
    assert all(r < 2 for d in draws for r, _ in d)
