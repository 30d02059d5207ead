"""FastNet: a small conv net in the spirit of Keller Jordan's airbench (CIFAR-10 speedruns).

Airbench's net is a stem conv followed by blocks of conv -> max-pool -> BN -> GELU ->
conv -> BN -> GELU, then a global max-pool and a linear head. We keep that shape with a plain
learned 3x3 stem (airbench initialises its stem by patch whitening of the training set, which
a victim built before seeing data cannot do) and make the widths a parameter. With
`stem_pool` the stem is conv -> max-pool -> BN -> GELU, so nothing but one conv runs at full
resolution: on a CPU that halves the step time (BN and GELU on 32x32 maps cost as much as
the convolutions). It is not one of the paper's victims: it exists so that the CPU profiles
train a real CNN in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ueb.interfaces import Victim
from ueb.params import bounded


def _conv_bn_gelu(cin: int, cout: int, pool: bool, momentum: float):
    from torch import nn

    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(cout, momentum=momentum), nn.GELU()]
    return layers


class FastNet(Victim):
    """Airbench-style conv-BN-GELU net; CPU-friendly defaults (stem 16, widths 32/64/128)."""

    version: ClassVar[str] = "2"  # 2: pooled stem, narrower CPU-friendly widths

    @dataclass(frozen=True)
    class Params:
        stem_width: int = bounded(16, ge=1)
        widths: tuple[int, ...] = bounded(
            (32, 64, 128), ge=1
        )  # one block per entry; each halves the resolution
        stem_pool: bool = True  # halve the resolution after the stem conv
        bn_momentum: float = bounded(0.1, ge=0, le=1)

    def build(self, num_classes: int, image_size: int, in_channels: int = 3):
        from torch import nn

        from ueb.nn import Classifier
        from ueb_victims._common import check_positive

        p = self.params
        if not p.widths:
            from ueb.errors import ConfigError

            raise ConfigError(
                f"victim '{self.name}': 'widths' is empty", "give at least one block width"
            )
        check_positive(
            f"victim '{self.name}'",
            stem_width=p.stem_width,
            **{f"widths[{i}]": w for i, w in enumerate(p.widths)},
        )
        pool_stem = p.stem_pool and image_size >= 2
        layers = _conv_bn_gelu(in_channels, p.stem_width, pool=pool_stem, momentum=p.bn_momentum)
        cin = p.stem_width
        size = image_size // 2 if pool_stem else image_size
        for w in p.widths:
            pool = size >= 2  # small inputs (e.g. 8x8 in tests) simply stop pooling
            layers += _conv_bn_gelu(cin, w, pool=pool, momentum=p.bn_momentum)
            layers += _conv_bn_gelu(w, w, pool=False, momentum=p.bn_momentum)
            size //= 2 if pool else 1
            cin = w
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        return Classifier(nn.Sequential(*layers), cin, num_classes)
