"""The data the training loop hands to a countermeasure's hooks and returns: a mini-batch, the
loop's position, and the result of a training. Part of the plugin contract (re-exported by
ueb.interfaces); kept apart so that ueb.training imports no plugin interface.

This module does not import torch at run time, so listing plugins stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Batch:
    """One training mini-batch on the device. `x` is float in [0, 1].

    Mixing countermeasures set `y2` and a per-sample weight `lam` (the loss is
    lam * CE(y) + (1 - lam) * CE(y2)); with `y2` None the loss is plain CE(y).
    """

    x: torch.Tensor
    y: torch.Tensor
    y2: torch.Tensor | None = None
    lam: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.y2 is None or self.lam is None:
            return F.cross_entropy(logits, self.y)
        a = F.cross_entropy(logits, self.y, reduction="none")
        b = F.cross_entropy(logits, self.y2, reduction="none")
        return (self.lam * a + (1 - self.lam) * b).mean()


@dataclass
class StepContext:
    """Where the training loop is, and the generator all in-loop randomness must use."""

    step: int
    total_steps: int
    generator: torch.Generator
    model: nn.Module
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Clean test accuracy (in %) at the end and at its best, plus the curve."""

    final_acc: float
    peak_acc: float
    peak_step: int
    iterations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class StepHooks(Protocol):
    """What the Trainer calls at every step: a countermeasure acting in training, or plain
    training."""

    def augment(self, batch: Batch, step: StepContext) -> Batch: ...

    def loss(self, model: nn.Module, batch: Batch, step: StepContext) -> torch.Tensor: ...
