"""FastNet: a small conv net in the spirit of Keller Jordan's airbench (CIFAR-10 speedruns).

Airbench's net is a stem conv followed by blocks of conv -> max-pool -> BN -> GELU ->
conv -> BN -> GELU, then a global max-pool and a linear head. We keep that shape with a plain
learned 3x3 stem (airbench initialises its stem by patch whitening of the training set, which
a victim built before seeing data cannot do) and make the widths a parameter. It is not one
of the paper's victims: it exists so that the CPU profiles train a real CNN in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ueb.interfaces import Victim


def _conv_bn_gelu(cin: int, cout: int, pool: bool, momentum: float):
    from torch import nn

    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(cout, momentum=momentum), nn.GELU()]
    return layers


class FastNet(Victim):
    """Airbench-style conv-BN-GELU net; widths default to a CPU-friendly (64, 128, 256)."""

    version: ClassVar[str] = "1"

    @dataclass(frozen=True)
    class Params:
        stem_width: int = 32
        widths: tuple[int, ...] = (64, 128, 256)  # one block per entry; each halves the resolution
        bn_momentum: float = 0.1

    def build(self, num_classes: int, image_size: int, in_channels: int = 3):
        from torch import nn

        from ueb.nn import Classifier
        from ueb_victims._common import check_positive

        p = self.params
        if not p.widths:
            from ueb.errors import ConfigError

            raise ConfigError(f"victim '{self.name}': 'widths' is empty", "give at least one block width")
        check_positive(f"victim '{self.name}'", stem_width=p.stem_width, **{f"widths[{i}]": w for i, w in enumerate(p.widths)})
        layers = _conv_bn_gelu(in_channels, p.stem_width, pool=False, momentum=p.bn_momentum)
        cin = p.stem_width
        size = image_size
        for w in p.widths:
            pool = size >= 2  # small inputs (e.g. 8x8 in tests) simply stop pooling
            layers += _conv_bn_gelu(cin, w, pool=pool, momentum=p.bn_momentum)
            layers += _conv_bn_gelu(w, w, pool=False, momentum=p.bn_momentum)
            size //= 2 if pool else 1
            cin = w
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        return Classifier(nn.Sequential(*layers), cin, num_classes)
