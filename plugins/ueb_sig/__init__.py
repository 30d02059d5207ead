"""Semantic Images Generation (SIG): the hidden images of Deep Hiding (paper Sec. III-B3).

Text-prompt clustering picks one distinct prompt per class; each class gets one canny edge map;
a generator draws many images per class that share that shape and differ in texture. Two
generators: Stable Diffusion + ControlNet from local weights (`backend="diffusers"`, the
paper's) and an offline approximation needing no weights (`backend="offline"`). See docs/sig.md.

Importing this package does not import torch: the public names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_or_build_bank": "ueb_sig.bank",
    "SemanticBank": "ueb_sig.bank",
    "class_similarity": "ueb_sig.similarity",
    "bank_similarity": "ueb_sig.similarity",
    "imageset_similarity": "ueb_sig.similarity",
    "set_similarity": "ueb_sig.similarity",
    "select_prompts": "ueb_sig.tpc",
    "read_corpus": "ueb_sig.tpc",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ueb_sig' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
