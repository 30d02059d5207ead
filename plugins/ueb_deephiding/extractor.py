"""The Latent Feature Concentration extractor G (paper Sec. III-B2): a frozen ResNet-18.

The paper uses a pre-trained ResNet-18 and takes "the output of the final convolution
layer". Pre-trained weights cannot be downloaded here, so G is either loaded from a local
weights file (a state dict of the `resnet18` victim at the same width) or, by default,
trained on the clean training data with ueb's Trainer and cached as an artifact.
Features are the last conv stage's map, taken just before the global pooling.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ueb.atomic import save_torch
from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import RunContext
from ueb.params import as_dict
from ueb.training import Trainer

POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


class ConvFeatures(nn.Module):
    """Frozen backbone returning the feature map that enters its last pooling layer.

    The perturbation x_ue - x_c is already centred on 0, so it goes into the backbone as is
    (the backbone's input space is the Classifier's [-0.5, 0.5]).
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.backbone = classifier.backbone if hasattr(classifier, "backbone") else classifier
        pools = [m for m in self.backbone.modules() if isinstance(m, POOLS)]
        if not pools:
            raise ConfigError(
                "the LFC extractor's backbone has no pooling layer", "use the resnet18 victim"
            )
        self._captured: list[torch.Tensor] = []
        pools[-1].register_forward_pre_hook(self._capture)
        self.backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._captured.append(inputs[0])

    def train(self, mode: bool = True) -> ConvFeatures:  # stays in eval mode (BN statistics frozen)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        self.backbone(x)
        out = self._captured[-1]
        self._captured.clear()
        return out


def build_resnet(ctx: RunContext, train: ImageSet, width: int) -> nn.Module:
    victim = ctx.plugin("victim", "resnet18", {"width": width})
    return victim.build(train.num_classes, train.image_size, train.channels)


def load_extractor(
    ctx: RunContext,
    train: ImageSet,
    width: int,
    weights: str,
    iterations: int,
    seed: int,
) -> tuple[ConvFeatures, dict[str, Any]]:
    """The extractor and a record of where its weights came from (for `report()`)."""
    from ueb.training import resolve_device

    device = resolve_device(ctx.device)
    model = build_resnet(ctx, train, width)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"LFC extractor weights {path} do not exist",
                "pass a local state-dict file or leave 'extractor_weights' empty to train one",
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"LFC extractor weights {path} do not fit a resnet18 of width {width}: {str(exc).splitlines()[0]}",
                "check 'extractor_width'",
            ) from exc
        info = {"source": "file", "path": str(path), "width": width}
    else:
        recipe = {
            "what": "lfc-extractor",
            "victim": "resnet18",
            "width": width,
            "dataset": train.fingerprint(),
            "iterations": iterations,
            "training": {
                k: v
                for k, v in as_dict(ctx.training).items()
                if k not in ("iterations", "eval_every", "eval_batch_size")
            },
            "seed": seed,
        }
        art = ctx.artifacts.get("deephiding-extractor", recipe)
        file = art.path / "extractor.pt"
        if art.done and file.exists():
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
            acc = art.manifest().get("train_acc")
        else:
            cfg = replace(ctx.training, iterations=iterations, eval_every=0)
            cfg = replace(cfg, milestones=tuple(int(iterations * f) for f in (0.5, 0.75)))
            trainer = Trainer(cfg, device, seed, ctx.progress)
            probe = train.subset(torch.arange(0, len(train), max(1, len(train) // 1000)))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                result = trainer.fit(model, train, probe, description="LFC extractor (resnet18)")
            acc = result.final_acc
            save_torch(model.state_dict(), file, what="the LFC extractor")
            ctx.artifacts.finish(art, train_acc=acc)
        info = {
            "source": "trained",
            "artifact": art.key,
            "width": width,
            "iterations": iterations,
            "train_acc": acc,
        }
    return ConvFeatures(model.to(device)), info
