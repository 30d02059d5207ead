"""Deep Hiding: wavelets, invertible network, losses, hider training (resume, rollback)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ueb_deephiding.inn import HidingNetwork
from ueb_deephiding.losses import (
    LossWeights,
    concentration_loss,
    freq_loss,
    hide_loss,
    reveal_loss,
    total_loss,
)
from ueb_deephiding.wavelets import haar_dwt, haar_idwt, low_band

# --------------------------------------------------------------------------- wavelets


def test_dwt_matches_pywavelets_bands_scaling_and_signs():
    import pywt  # a hard dependency (pywavelets): missing it must fail, not skip

    x = torch.rand(2, 3, 8, 6, dtype=torch.float64)
    z = haar_dwt(x)
    assert z.shape == (2, 12, 4, 3)
    for b in range(2):
        for c in range(3):
            ca, (ch, cv, cd) = pywt.dwt2(x[b, c].numpy(), "haar")
            for band, ref in enumerate((ca, ch, cv, cd)):
                np.testing.assert_allclose(z[b, band * 3 + c].numpy(), ref, atol=1e-12)


def test_dwt_is_exactly_invertible_and_energy_preserving():
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    z = haar_dwt(x)
    torch.testing.assert_close(haar_idwt(z), x, atol=1e-14, rtol=0)
    torch.testing.assert_close(haar_dwt(haar_idwt(z)), z, atol=1e-14, rtol=0)
    assert math.isclose(float(z.pow(2).sum()), float(x.pow(2).sum()), rel_tol=1e-12)
    assert low_band(z).shape == (3, 3, 8, 8)


def test_dwt_is_differentiable_and_rejects_odd_sizes():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    haar_idwt(haar_dwt(x) * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
    with pytest.raises(ValueError, match="even"):
        haar_dwt(torch.rand(1, 3, 5, 4))


# --------------------------------------------------------------------------- INN


def _random_net(blocks=3, growth=8, seed=0):
    torch.manual_seed(seed)
    net = HidingNetwork(blocks=blocks, in_channels=3, clamp=2.0, growth=growth)
    with torch.no_grad():  # leave the identity start so every coupling does something
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.double()


def test_fresh_network_is_the_identity_on_the_cover():
    net = HidingNetwork(blocks=2, growth=8)
    assert all(
        float(p.detach().abs().sum()) == 0 for n, p in net.named_parameters() if ".out." in n
    )
    x, h = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(net.hide(x, h)[0], x, atol=1e-6, rtol=0)


def test_inn_reverse_inverts_forward_to_float_precision():
    net = _random_net()
    x, h = (
        torch.rand(2, 3, 16, 16, dtype=torch.float64),
        torch.rand(2, 3, 16, 16, dtype=torch.float64),
    )
    container, z_h = net.hide(x, h)
    assert (
        float((container - x).detach().abs().max()) > 1e-3
    )  # the coupling really changed the cover
    x_back, h_back = net.reveal(container, z_h)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(h_back, h, atol=1e-10, rtol=0)
    net32 = _random_net().float()
    c32, z32 = net32.hide(x.float(), h.float())
    torch.testing.assert_close(net32.reveal(c32, z32)[1], h.float(), atol=1e-4, rtol=0)


def test_clamped_scale_is_bounded_by_exp_alpha():
    net = _random_net(blocks=1)
    block = net.blocks[0]
    with torch.no_grad():
        block.rho.out.bias.fill_(1e3)
        s = block.scale(torch.rand(1, 12, 4, 4, dtype=torch.float64))
    assert float(s.max()) <= math.exp(2.0) + 1e-9


# --------------------------------------------------------------------------- losses


def test_hide_loss_is_flat_inside_the_radius_and_mse_outside():
    eps = 8 / 255
    x = torch.full((1, 3, 4, 4), 0.5)
    assert math.isclose(float(hide_loss(x + 0.01, x, eps)), eps**2, rel_tol=1e-6)
    assert math.isclose(float(hide_loss(x + 0.1, x, eps)), 0.01, rel_tol=1e-5)
    y = (x + 0.01).requires_grad_()
    hide_loss(y, x, eps).backward()
    assert float(y.grad.abs().sum()) == 0.0


def test_freq_loss_compares_only_the_low_band():
    x = torch.full((1, 3, 4, 4), 0.5)
    # a constant shift of 0.1 moves LL by 2 * 0.1 (orthonormal Haar) and no detail band
    assert math.isclose(float(freq_loss(x + 0.1, x)), 0.04, rel_tol=1e-5)
    checker = torch.zeros(1, 3, 4, 4)
    checker[..., 0::2, 0::2] = 0.1
    checker[..., 1::2, 1::2] = 0.1
    checker[..., 0::2, 1::2] = -0.1
    checker[..., 1::2, 0::2] = -0.1
    assert float(freq_loss(x + checker, x)) < 1e-12  # pure diagonal detail: LL untouched


def test_reveal_loss_is_mse():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.3)
    assert math.isclose(float(reveal_loss(a, b)), 0.09, rel_tol=1e-5)


def test_concentration_loss_sums_cosine_distance_over_same_class_pairs():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 0, 1])
    # pairs in class 0: (0,1): 1, (0,2): 2, (1,2): 1; class 1 has no pair; class 0 vs 1 ignored
    assert math.isclose(float(concentration_loss(f, y)), 8.0, rel_tol=1e-6)
    assert float(concentration_loss(f[:1].repeat(3, 1), torch.zeros(3, dtype=torch.long))) < 1e-6
    feat = torch.randn(4, 2, 3, 3)  # feature maps are flattened
    assert concentration_loss(feat, torch.tensor([0, 1, 2, 3])).item() == 0.0


def test_total_loss_weights_the_terms():
    torch.manual_seed(0)
    x, h = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    c, rv = x + 0.2 * torch.rand_like(x), torch.rand_like(h)
    y = torch.tensor([0, 0, 1, 1])
    w = LossWeights(w_freq=2.0, w_reveal=3.0, w_conc=0.5)
    t = total_loss(x, h, y, c, rv, lambda d: d.mean(1), w)
    expect = t["hide"] + 2 * t["freq"] + 3 * t["reveal"] + 0.5 * t["conc"]
    torch.testing.assert_close(t["total"], expect)
    assert float(t["conc"]) > 0
    assert float(total_loss(x, h, y, c, rv, None, w)["conc"]) == 0.0
