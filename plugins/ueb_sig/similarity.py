"""Intra-/inter-class cosine similarity of latent features (paper appendix A.2.7, Table J).

Features are the flattened output of a victim's backbone (for ResNet-18: the last conv stage,
globally average-pooled, 512 values). Table J's two numbers:
  * intra-class: mean cosine similarity between each sample's feature and its class mean;
  * inter-class: mean cosine similarity between each class mean and the overall mean.
Higher intra means tighter classes, lower inter means classes farther apart. With ReLU features
every vector lies in the positive orthant, so both numbers sit near 1 for an untrained
network; `to_other_means` (mean cosine similarity between each sample and the means of the
*other* classes) and `margin` = intra - to_other_means say whether a sample is closer to its own
class than to the rest, which is the comparison that stays meaningful there. The `*_centred`
pair repeats it after subtracting the overall mean feature from every vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ueb.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ueb.imageset import ImageSet
    from ueb.interfaces import RunContext

    from .bank import SemanticBank


def class_similarity(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Table J's intra/inter numbers (and `to_other_means`, `margin`) for (N, D) features."""
    import torch
    import torch.nn.functional as F

    f = features.double().flatten(1)
    y = labels.long().to(f.device)
    classes = torch.unique(y)
    if len(classes) < 2:
        raise DataError(
            "class similarity needs at least two classes", "pass images of several classes"
        )
    means = torch.stack([f[y == c].mean(0) for c in classes])  # (K, D)
    overall = f.mean(0)
    index = torch.searchsorted(classes, y)
    fn = F.normalize(f, dim=1)
    mn = F.normalize(means, dim=1)
    sims = fn @ mn.T  # (N, K): each sample against every class mean
    own = sims.gather(1, index[:, None])[:, 0]
    k = len(classes)
    other = (sims.sum(1) - own) / (k - 1)
    inter = (mn @ F.normalize(overall, dim=0)).mean()
    # Per-class averaging first, so unequal class sizes do not reweight the classes.
    intra_c = torch.stack([own[y == c].mean() for c in classes])
    other_c = torch.stack([other[y == c].mean() for c in classes])
    # The same comparison after removing the overall mean feature: the common positive offset
    # of ReLU features no longer dominates, which matters for untrained networks.
    fc = F.normalize(f - overall, dim=1)
    mc = F.normalize(means - overall, dim=1)
    csims = fc @ mc.T
    cown = csims.gather(1, index[:, None])[:, 0]
    cother = (csims.sum(1) - cown) / (k - 1)
    return {
        "intra": float(intra_c.mean()),
        "inter": float(inter),
        "to_other_means": float(other_c.mean()),
        "margin": float((intra_c - other_c).mean()),
        "intra_centred": float(torch.stack([cown[y == c].mean() for c in classes]).mean()),
        "to_other_means_centred": float(
            torch.stack([cother[y == c].mean() for c in classes]).mean()
        ),
        "classes": int(k),
        "samples": int(len(f)),
    }


def latent_features(
    images: torch.Tensor, model: nn.Module, device: str = "cpu", batch_size: int = 128
) -> torch.Tensor:
    """`model.features` (or the model's flattened output) of uint8 or [0, 1] images."""
    import torch

    model = model.to(device).eval()
    fn = getattr(model, "features", None) or model
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            out.append(torch.flatten(fn(x), 1).double().cpu())
    return torch.cat(out)


def feature_network(
    ctx: RunContext,
    num_classes: int,
    image_size: int,
    victim: str = "resnet18",
    weights: str | Path | None = None,
) -> nn.Module:
    """The victim `victim` from the registry, untrained (seeded by ctx.seed) or loaded from a
    state-dict file (`weights`: a trained classifier for this victim; the head may differ)."""
    import torch

    torch.manual_seed(ctx.seed)
    model = ctx.plugin("victim", victim).build(num_classes, image_size)
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise ConfigError(
                f"--weights {p} does not exist", "pass a state-dict file saved from this victim"
            )
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        own = model.state_dict()
        usable = {
            k: v
            for k, v in state.items()
            if k in own and own[k].shape == v.shape and not k.startswith("head.")
        }
        missing = [k for k in own if not k.startswith("head.") and k not in usable]
        if missing:
            raise ConfigError(
                f"--weights {p} does not fit victim '{victim}' (e.g. missing '{missing[0]}')",
                "pass weights saved from the same victim",
            )
        model.load_state_dict(usable, strict=False)
    return model


def set_similarity(
    images: torch.Tensor,
    labels: torch.Tensor,
    ctx: RunContext,
    victim: str = "resnet18",
    weights: str | Path | None = None,
    model: nn.Module | None = None,
    train_iterations: int = 0,
) -> dict[str, Any]:
    """Table J metric for any labelled images (a bank, a clean set, a poisoned set).

    The paper reads features from a ResNet-18 trained on the set being measured;
    `train_iterations > 0` does that here (the profile's training protocol, that many SGD
    steps on the set itself) before the features are taken.
    """
    import torch

    num_classes = max(int(torch.unique(labels).numel()), int(labels.max()) + 1)
    if model is None:
        model = feature_network(ctx, num_classes, int(images.shape[-1]), victim, weights)
        source = f"{victim} ({'weights ' + Path(weights).name if weights else 'untrained, seed ' + str(ctx.seed)})"
    else:
        source = type(model).__name__
    if train_iterations > 0:
        import dataclasses

        from ueb.imageset import ImageSet
        from ueb.training import Trainer

        cfg = dataclasses.replace(
            ctx.training, iterations=train_iterations, milestones=(), eval_every=train_iterations
        )
        data = ImageSet(
            images, labels, tuple(str(c) for c in range(num_classes)), name="similarity"
        )
        result = Trainer(cfg, ctx.device, ctx.seed, ctx.progress).fit(
            model, data, data, description="training the feature network"
        )
        source += f", then trained {train_iterations} steps on this set (train acc {result.final_acc:.1f}%)"
    feats = latent_features(images, model, str(ctx.device))
    return {**class_similarity(feats, labels), "features": source}


def bank_similarity(bank: SemanticBank, ctx: RunContext, **kw: Any) -> dict[str, Any]:
    x, y = bank.flat()
    return set_similarity(x, y, ctx, **kw)


def imageset_similarity(data: ImageSet, ctx: RunContext, **kw: Any) -> dict[str, Any]:
    return set_similarity(data.images, data.labels, ctx, **kw)


def pixel_similarity(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean centred cosine similarity of signed pixels within and across classes.

    Every image (flattened, in [0, 1]) minus the mean image of the set: a positive cosine says
    two images are brighter and darker in the same places, i.e. share their luminance layout,
    not only their edges. `within` averages over pairs of distinct images of one class,
    `across` over pairs from different classes.
    """
    import torch
    import torch.nn.functional as F

    x = images.double().flatten(1)
    if x.max() > 1:
        x = x / 255
    y = labels.long()
    if len(torch.unique(y)) < 2:
        from ueb.errors import DataError

        raise DataError("pixel similarity needs at least two classes", "pass a labelled set")
    f = F.normalize(x - x.mean(0), dim=1)
    cos = f @ f.T
    same = y[:, None] == y[None, :]
    distinct = ~torch.eye(len(y), dtype=torch.bool)
    return {
        "within": float(cos[same & distinct].mean()),
        "across": float(cos[~same].mean()),
    }
