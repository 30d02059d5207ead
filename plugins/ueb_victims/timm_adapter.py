"""Any timm architecture as a victim, trained from scratch (`-v timm --param timm.arch=NAME`).

The model is `timm.create_model(arch, pretrained=False, num_classes=..., in_chans=...)`:
random initialisation from torch's global RNG, nothing downloaded. Its classifier is then
reset (`reset_classifier(0)`), so the timm model returns pooled pre-logit features and the
Classifier adds the linear head. Architectures that take an input size (ViT, Swin, CaiT, ...)
get `img_size=image_size`; the others are built for any size. timm is an optional extra
(`pip install 'ueb[timm]'`); importing this module does not import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

from ueb.errors import ConfigError
from ueb.interfaces import Victim
from ueb.params import closest

INSTALL = "pip install 'ueb[timm]'"


def import_timm(owner: str) -> Any:
    """timm, or one ConfigError line naming the extra to install."""
    try:
        return importlib.import_module("timm")
    except ImportError as exc:
        raise ConfigError(
            f"{owner} needs the optional package timm ({exc})", f"install it: {INSTALL}"
        ) from None


class TimmVictim(Victim):
    """A timm architecture named by `arch`, pretrained=False, with the Classifier's linear head."""

    version: ClassVar[str] = "1"

    @dataclass(frozen=True)
    class Params:
        arch: str = "resnet18"  # any name of timm.list_models()
        pass_image_size: bool = True  # give img_size=image_size to architectures that take one

    def preflight(self) -> None:
        owner = f"victim '{self.name}'"
        timm = import_timm(owner)
        arch = self.params.arch
        if not timm.is_model(arch):
            hint = closest(arch, timm.list_models())
            fix = f"did you mean '{hint}'?" if hint else "pick a name from timm.list_models()"
            raise ConfigError(
                f"{owner}: '{arch}' is not a timm architecture (timm {timm.__version__})", fix
            )

    def input_identity(self) -> dict[str, Any]:
        """The timm release: its definitions (and so the trained model) may change with it."""
        return {"timm": str(import_timm(f"victim '{self.name}'").__version__)}

    def build(self, num_classes: int, image_size: int, in_channels: int = 3):
        from ueb.nn import Classifier

        self.preflight()
        timm = import_timm(f"victim '{self.name}'")
        p = self.params
        common = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
        model = None
        if p.pass_image_size:
            try:
                model = timm.create_model(p.arch, img_size=image_size, **common)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
        if model is None:
            model = timm.create_model(p.arch, **common)
        model.reset_classifier(0)
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        return Classifier(model, dim, num_classes)
