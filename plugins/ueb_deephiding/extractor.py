"""The Latent Feature Concentration extractor G (paper Sec. III-B2): a frozen ResNet-18.

The paper uses a pre-trained ResNet-18 and takes "the output of the final convolution
layer". Pre-trained weights cannot be downloaded here, so G is either loaded from a local
weights file (a state dict of the `resnet18` victim at the same width) or, by default,
trained on the clean training data with the paper's ResNet-18 protocol (Sec. IV-A3) for
`extractor_iterations` steps, seeded by the poison's seed, and cached as an artifact. Its
training is its own: the victim's protocol does not enter it.

How G sees a perturbation (FEATURES; docs/deephiding.md, "How G sees a perturbation"): the
map x_pm is rescaled from [-eps, eps] onto the backbone's input range [-0.5, 0.5], as a
perturbation is shown as an image, and every BatchNorm layer normalises with the statistics
of the batch at hand (a freshly loaded torchvision model is in training mode), its running
statistics left untouched. With the clean images' running statistics instead, an 8/255 map
gives features dominated by the network's response to a near-zero input (same-class cosine
0.9996 at quick scale), and L_conc carries no gradient. Features are the map that enters the
last pooling layer (the last conv stage's output).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ueb.atomic import save_torch
from ueb.errors import ConfigError
from ueb.imageset import ImageSet
from ueb.interfaces import RunContext
from ueb.params import as_dict
from ueb.profile import TrainingConfig
from ueb.training import Trainer

POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
FEATURES = "pre-pool map of x_pm / (2 eps), batch-statistics BatchNorm"
PAPER_PROTOCOL = TrainingConfig()  # Sec. IV-A3: SGD 0.1, batch 128, x0.1 at 40% and 80%


def extractor_training(iterations: int) -> TrainingConfig:
    """The paper's ResNet-18 protocol, shortened to `iterations` with its milestones scaled."""
    full = PAPER_PROTOCOL.iterations
    milestones = tuple(max(1, round(m * iterations / full)) for m in PAPER_PROTOCOL.milestones)
    return replace(PAPER_PROTOCOL, iterations=iterations, milestones=milestones, eval_every=0)


class ConvFeatures(nn.Module):
    """Frozen backbone returning the feature map that enters its last pooling layer, for a
    perturbation map (see the module docstring for why it is rescaled and batch-normalised)."""

    def __init__(self, classifier: nn.Module, eps: float):
        super().__init__()
        backbone = classifier.backbone if hasattr(classifier, "backbone") else classifier
        self.backbone = cast(nn.Module, backbone)
        self.scale = 1.0 / (2.0 * eps)
        pools = [m for m in self.backbone.modules() if isinstance(m, POOLS)]
        if not pools:
            raise ConfigError(
                "the LFC extractor's backbone has no pooling layer", "use the resnet18 victim"
            )
        self._captured: list[torch.Tensor] = []
        pools[-1].register_forward_pre_hook(self._capture)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self._batch_statistics()

    def _batch_statistics(self) -> None:
        self.backbone.eval()
        for m in self.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.momentum = 0.0  # running statistics stay as trained

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._captured.append(inputs[0])

    def train(self, mode: bool = True) -> ConvFeatures:  # the configuration above, always
        super().train(False)
        self._batch_statistics()
        return self

    def forward(self, perturbation: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        self.backbone(perturbation * self.scale)
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
    eps: float,
) -> tuple[ConvFeatures, dict[str, Any]]:
    """The extractor and a record of where its weights came from (for `report()`)."""
    from ueb.training import resolve_device

    device = resolve_device(ctx.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights too come from the poison's seed
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
        info = {"source": "file", "path": str(path), "width": width, "features": FEATURES}
    else:
        cfg = extractor_training(iterations)
        recipe = {
            "what": "lfc-extractor",
            "victim": "resnet18",
            "width": width,
            "dataset": train.fingerprint(),
            "iterations": iterations,
            "training": as_dict(cfg),
            "seed": seed,
        }
        art = ctx.artifacts.get("deephiding-extractor", recipe)
        file = art.path / "extractor.pt"
        if art.done and file.exists():
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
            acc = art.manifest().get("train_acc")
        else:
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
            "extractor_iterations": iterations,
            "seed": seed,
            "train_acc": acc,
            "features": FEATURES,
        }
    return ConvFeatures(model.to(device), eps), info
