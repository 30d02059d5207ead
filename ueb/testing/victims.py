"""The victim kit: the Classifier a Victim builds."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import torch

if typing.TYPE_CHECKING:
    from ueb.profile import TrainingConfig
from ueb.testing.contexts import tiny_training
from ueb.testing.declarations import _instantiate, _who

# --------------------------------------------------------------------------- victims


def check_victim(
    plugin: Any,
    *,
    params: Mapping[str, Any] | None = None,
    num_classes: int = 4,
    shapes: tuple[tuple[int, int], ...] = ((32, 3), (48, 1)),
    seed: int = 0,
    training: TrainingConfig | None = None,
) -> None:
    """Build a Victim (class or instance) at each (image_size, in_channels) of `shapes`.

    It must return a `ueb.nn.Classifier` whose backbone gives flat (N, feature_dim) features
    and whose output is (N, num_classes) finite logits for [0, 1] float images; two builds
    under one `torch.manual_seed` must be identical; one SGD step must change the weights.
    """
    from torch import nn

    from ueb.interfaces import Victim
    from ueb.nn import Classifier

    victim = _instantiate(plugin, Victim, params, training or tiny_training())
    who = _who(victim)
    for size, channels in shapes:
        where = f"{who}.build({num_classes}, {size}, {channels})"
        torch.manual_seed(seed)
        model = victim.build(num_classes, size, channels)
        if not isinstance(model, Classifier):
            raise AssertionError(
                f"{where} returned {type(model).__name__}; return ueb.nn.Classifier(backbone, feature_dim, num_classes)"
            )
        torch.manual_seed(seed)
        twin = victim.build(num_classes, size, channels)
        a, b = model.state_dict(), twin.state_dict()
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            raise AssertionError(
                f"{where} builds different weights under the same torch.manual_seed; initialise from torch's global RNG only"
            )
        x = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(seed))
        model.train()
        try:
            feats = model.backbone(x - model.shift)
        except Exception as exc:
            raise AssertionError(
                f"{where}: the model fails on a batch of shape {tuple(x.shape)} ({type(exc).__name__}: {exc})"
            ) from exc
        if tuple(feats.shape) != (4, model.feature_dim):
            raise AssertionError(
                f"{where}: the backbone returns {tuple(feats.shape)} for 4 images, not (4, feature_dim={model.feature_dim}); end it with flat features (nn.Flatten())"
            )
        logits = model(x)
        if (
            tuple(logits.shape) != (4, num_classes)
            or not logits.is_floating_point()
            or not bool(torch.isfinite(logits).all())
        ):
            raise AssertionError(
                f"{where} maps (4, {channels}, {size}, {size}) to {tuple(logits.shape)} {logits.dtype}; expected finite (4, {num_classes}) logits"
            )
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss = nn.functional.cross_entropy(model(x), torch.arange(4) % num_classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if all(torch.equal(before[k], v) for k, v in model.named_parameters()):
            raise AssertionError(
                f"{where}: one SGD step changed no weight; make the parameters trainable"
            )
        if not bool(torch.isfinite(model(x)).all()):
            raise AssertionError(f"{where}: logits are not finite after one training step")
