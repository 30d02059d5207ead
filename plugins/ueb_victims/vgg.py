"""VGG-19 with batch norm (Simonyan & Zisserman 2015) on torchvision's definition.

torchvision's configuration "E" (16 convs, 5 max-pools) with BN and its initialisation. At
32x32 the five pools leave a 1x1x512 map and the classifier is the CIFAR one of the
unlearnable-examples code bases (kuangliu/pytorch-cifar, as used by EM and REM): one linear
layer on the 512 features. At 224x224 it is torchvision's: 7x7 average pool and two
4096-unit layers before the head. `width` scales every conv (64 in the paper) for narrow CPU
victims and surrogates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ueb.interfaces import Victim
from ueb.params import bounded
from ueb_victims._common import CIFAR_STEM_MAX_SIZE, check_positive


class VGG19(Victim["VGG19.Params"]):
    """VGG-19-BN: torchvision cfg "E"; a linear classifier on the 512 features at 32x32."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"width": 8}, "quick": {"width": 16}}

    @dataclass(frozen=True)
    class Params:
        width: int = bounded(
            64, ge=1
        )  # channels of the first convs; later stages are 2x, 4x, 8x, 8x
        classifier: Literal["auto", "cifar", "imagenet"] = "auto"  # auto: cifar up to 64x64 inputs
        dropout: float = bounded(
            0.5, ge=0, le=1
        )  # torchvision's, used by the 224x224 classifier only

    def build(self, num_classes: int, image_size: int, in_channels: int = 3):
        from torch import nn
        from torchvision.models import vgg as tv

        from ueb.nn import Classifier

        p = self.params
        check_positive(f"victim '{self.name}'", width=p.width)
        cfg: list[str | int] = [v if v == "M" else int(v) * p.width // 64 for v in tv.cfgs["E"]]
        features = tv.make_layers(cfg, batch_norm=True)
        if in_channels != 3:  # make_layers assumes RGB input
            features[0] = nn.Conv2d(in_channels, int(cfg[0]), 3, padding=1)
        last = int(cfg[-2])
        net = tv.VGG(features, num_classes=num_classes, init_weights=False, dropout=p.dropout)
        if last != 512:
            net.classifier[0] = nn.Linear(last * 7 * 7, 4096)
        cifar = p.classifier == "cifar" or (
            p.classifier == "auto" and image_size <= CIFAR_STEM_MAX_SIZE
        )
        _init_like_torchvision(net)
        if cifar:
            return Classifier(
                nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                last,
                num_classes,
            )
        net.classifier = net.classifier[:-1]  # the head is the Classifier's
        return Classifier(net, 4096, num_classes)


def _init_like_torchvision(net) -> None:
    """VGG.__init__(init_weights=True)'s scheme, applied after the layers are final."""
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)
