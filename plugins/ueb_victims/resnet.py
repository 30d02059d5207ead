"""ResNet-18 and ResNet-50 (He et al. 2016) on torchvision's blocks.

At 32x32 the stem is the CIFAR one the unlearnable-examples literature trains (EM, REM and
the Deep Hiding paper use the kuangliu/pytorch-cifar layout): a 3x3 stride-1 conv and no
max-pool. At 224x224 it is torchvision's 7x7 stride-2 conv plus max-pool. `width` is the
first stage's channel count (64 in the paper); the stages use width x (1, 2, 4, 8), so a
narrow surrogate or CPU victim keeps the architecture and changes only the scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ueb.interfaces import Victim
from ueb.params import bounded
from ueb_victims._common import Stem, check_positive, use_cifar_stem


def build_resnet(
    block_name: str, layers: list[int], width: int, cifar_stem: bool, in_channels: int
):
    """A torchvision ResNet with base width `width`; its `fc` is Identity (features out)."""
    from torch import nn
    from torchvision.models import resnet as tv

    block = {"basic": tv.BasicBlock, "bottleneck": tv.Bottleneck}[block_name]

    class _ResNet(tv.ResNet):
        # torchvision fixes the stage widths at 64..512; we reuse its block builder
        # (`_make_layer`), forward pass and initialisation with a chosen base width.
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes = width
            self.dilation = 1
            self.groups = 1
            self.base_width = 64  # bottleneck inner width = planes, as in ResNet-50
            if cifar_stem:
                self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
                self.maxpool: nn.Module = nn.Identity()
            else:
                self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
                self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Identity()
            for m in self.modules():  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    return _ResNet(), width * 8 * block.expansion


class _ResNetVictim(Victim):
    block: ClassVar[str] = "basic"
    layers: ClassVar[tuple[int, int, int, int]] = (2, 2, 2, 2)

    @dataclass(frozen=True)
    class Params:
        width: int = bounded(64, ge=1)  # channels of the first stage (paper: 64)
        stem: Stem = "auto"  # auto: CIFAR stem up to 64x64 inputs, torchvision's above

    def build(self, num_classes: int, image_size: int, in_channels: int = 3):
        from ueb.nn import Classifier

        p = self.params
        check_positive(f"victim '{self.name}'", width=p.width)
        net, dim = build_resnet(
            self.block, list(self.layers), p.width, use_cifar_stem(p.stem, image_size), in_channels
        )
        return Classifier(net, dim, num_classes)


class ResNet18(_ResNetVictim):
    """ResNet-18: BasicBlock x (2, 2, 2, 2). The paper's main victim (Sec. IV-A3)."""

    version: ClassVar[str] = "1"
    block = "basic"
    layers = (2, 2, 2, 2)
    # CPU scale: 8 channels in the first stage instead of 64.
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"width": 8}, "quick": {"width": 8}}


class ResNet50(_ResNetVictim):
    """ResNet-50: Bottleneck x (3, 4, 6, 3), features 32 x width (2048 at width 64)."""

    version: ClassVar[str] = "1"
    block = "bottleneck"
    layers = (3, 4, 6, 3)
    # CPU scale: 4 channels in the first stage instead of 64.
    presets: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"width": 4}, "quick": {"width": 4}}
