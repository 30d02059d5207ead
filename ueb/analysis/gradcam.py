"""Grad-CAM (Selvaraju et al., ICCV 2017), as the paper uses it for its Fig. 3.

The class-discriminative map of class c at a conv layer with activations A^k is
ReLU(sum_k alpha_k^c A^k), with alpha_k^c the spatial mean of d y^c / d A^k (y^c: the logit,
before softmax). It is upsampled bilinearly to the input size and scaled to [0, 1] per image.
The layer is the last nn.Conv2d of the victim's backbone, in module registration order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def last_conv(model: nn.Module) -> nn.Conv2d | None:
    """The last Conv2d registered in `model.backbone` (or in `model` if it has no backbone)."""
    root = getattr(model, "backbone", model)
    convs = [m for m in root.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] for [0, 1] `images` (N, C, H, W).

    `targets` are the classes to explain (default: the model's predictions).
    """
    layer = layer or last_conv(model)
    if layer is None:
        raise ValueError("the model has no Conv2d layer to take Grad-CAM at")
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        store["act"] = output
        output.register_hook(lambda g: store.__setitem__("grad", g))

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = (
                images.detach().clone().requires_grad_(True)
            )  # so hooks fire even with frozen weights
            logits = model(x)
            if targets is None:
                targets = logits.argmax(1)
            chosen = logits.gather(1, targets.to(logits.device).view(-1, 1)).sum()
            model.zero_grad(set_to_none=True)
            chosen.backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return ((cam - lo) / (hi - lo).clamp_min(1e-12)).cpu()
