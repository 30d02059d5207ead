"""Detectors: given a training set, a score per image and a verdict per set.

Targets are "module:Class" strings, so listing detectors never imports torch.
docs/detectors.md gives each method's source, settings and the detection table's metrics.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_detectors(register):
    register(
        "simple-net",
        "ueb_detectors.udp:SimpleNetDetector",
        summary="UDP simple networks (Zhu, Yu & Gao, AAAI 2024): a two-layer net on pixels whose held-out accuracy exceeds B=0.7 flags a poisoned set; no clean data",
    )
    register(
        "simple-net-linear",
        "ueb_detectors.udp:SimpleNetDetector",
        summary="UDP simple networks, the linear variant (Zhu, Yu & Gao, AAAI 2024): a linear map on pixels, no augmentation; no clean data",
        defaults={"model": "linear", "augment": False},
        hidden_from_all=True,
    )
    register(
        "bias-shift",
        "ueb_detectors.bias_shift:BiasShiftDetector",
        summary="UDP bias-shifting noise test (Zhu, Yu & Gao, AAAI 2024): a ResNet-18 trained on the set shifted by -0.5 whose unshifted held-out accuracy exceeds B=0.7 flags a poisoned set; no clean data",
        hidden_from_all=True,
    )
