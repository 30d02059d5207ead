"""DenseNet-121 (Huang et al. 2017) on torchvision's definition.

Blocks (6, 12, 24, 16), growth rate 32, bottleneck 4x, compression 0.5: torchvision's
DenseNet unchanged except the stem. At 32x32 the stem is the CIFAR one (kuangliu/pytorch-cifar,
as used by the unlearnable-examples code bases): a 3x3 stride-1 conv to 2 x growth channels
and no max-pool; at 224x224 torchvision's 7x7 stride-2 conv plus max-pool. `growth_rate`
(32 in the paper) scales the whole net for narrow CPU victims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ueb.interfaces import Victim
from ueb.params import bounded
from ueb_victims._common import Stem, check_positive, use_cifar_stem


class DenseNet121(Victim["DenseNet121.Params"]):
    """DenseNet-121: torchvision's DenseNet(32, (6, 12, 24, 16), 64) with a CIFAR stem at 32x32."""

    version: ClassVar[str] = "1"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"growth_rate": 4},
        "quick": {"growth_rate": 4},
    }

    @dataclass(frozen=True)
    class Params:
        growth_rate: int = bounded(32, ge=1)
        stem: Stem = "auto"  # auto: CIFAR stem up to 64x64 inputs, torchvision's above
        memory_efficient: bool = False  # torchvision's gradient checkpointing of dense layers

    def build(self, num_classes: int, image_size: int, in_channels: int = 3):
        from torch import nn
        from torchvision.models import densenet as tv

        from ueb.nn import Classifier

        p = self.params
        check_positive(f"victim '{self.name}'", growth_rate=p.growth_rate)
        init = 2 * p.growth_rate
        net = tv.DenseNet(
            growth_rate=p.growth_rate,
            block_config=(6, 12, 24, 16),
            num_init_features=init,
            memory_efficient=p.memory_efficient,
        )
        if use_cifar_stem(p.stem, image_size):
            net.features.conv0 = nn.Conv2d(in_channels, init, 3, stride=1, padding=1, bias=False)
            net.features.pool0 = nn.Identity()
        elif in_channels != 3:
            net.features.conv0 = nn.Conv2d(in_channels, init, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.features.conv0.weight)  # torchvision's init for convs
        dim = net.classifier.in_features
        net.classifier = nn.Identity()  # DenseNet.forward then returns pooled features
        return Classifier(net, dim, num_classes)
