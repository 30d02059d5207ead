"""Broken variants of the methods in CI's numbers check, to prove that the check catches them.

Loaded with `--plugins-dir tests/mutants`. Each mutant subclasses the real class and breaks one
thing, keeping the real class's parameters (so a profile's `[plugins."cw-lf*"]` section reaches
it) and its version. benchmarks/baselines/ci-mutants.toml lists them with the real name each
stands in for and the cell the check must report; tests/test_baseline_ci.py runs them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ueb_baselines.controls import ClassWiseSign
from ueb_countermeasures.preprocess import BitDepthReduction, Grayscale
from ueb_victims.fastnet import FastNet

from ueb.hookspecs import hookimpl
from ueb.imageset import ImageSet
from ueb.interfaces import RunContext
from ueb.nn import Classifier


class ReturnsClean(ClassWiseSign):
    """Computes the pattern but hands back the clean images."""

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        super().poison(train, ctx)
        return train.float01()


class TenthPerturbation(ClassWiseSign):
    """A tenth of the real perturbation (a scale bug, e.g. eps read in the wrong unit)."""

    def poison(self, train: ImageSet, ctx: RunContext) -> torch.Tensor:
        clean = train.float01()
        return clean + (super().poison(train, ctx) - clean) * 0.1


class IgnoredBitDepth(BitDepthReduction):
    """Bit-depth reduction whose operation never reaches the training set."""

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        super().apply(images, ctx)
        return images


class IgnoredGrayscale(Grayscale):
    """Grayscale whose operation never reaches the training set (the identity on grey images,
    so only a poison with colour shows it)."""

    def apply(self, images: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        super().apply(images, ctx)
        return images


class _Untrainable(Classifier):
    """The real network with every weight frozen; a zero-weight scalar keeps backward() legal."""

    def __init__(self, model: Classifier) -> None:
        super().__init__(model.backbone, model.feature_dim, model.head.out_features, model.shift)
        self.head = model.head
        for p in self.parameters():
            p.requires_grad_(False)
        self.idle = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.0 * self.idle


class NeverTrains(FastNet):
    """fastnet whose weights stay at their initialisation: the optimizer has nothing to move."""

    def build(self, num_classes: int, image_size: int, in_channels: int = 3) -> Classifier:
        return _Untrainable(super().build(num_classes, image_size, in_channels))


@hookimpl
def register_poisoners(register: Callable[..., None]) -> None:
    """Broken cw-lf variants, with cw-lf's own registered defaults."""
    cw_lf = {"block": 8}  # cw-lf's registration
    register(
        "cw-lf-returns-clean",
        ReturnsClean,
        summary="mutant: cw-lf returning the clean images",
        defaults=cw_lf,
        hidden_from_all=True,
    )
    register(
        "cw-lf-tenth",
        TenthPerturbation,
        summary="mutant: cw-lf at a tenth of its perturbation",
        defaults=cw_lf,
        hidden_from_all=True,
    )


@hookimpl
def register_countermeasures(register: Callable[..., None]) -> None:
    """Countermeasures whose operation is dropped."""
    register(
        "bdr-ignored",
        IgnoredBitDepth,
        summary="mutant: bdr whose operation is dropped",
        stage="data",
        hidden_from_all=True,
    )
    register(
        "grayscale-ignored",
        IgnoredGrayscale,
        summary="mutant: grayscale whose operation is dropped",
        stage="data",
        hidden_from_all=True,
    )


@hookimpl
def register_victims(register: Callable[..., None]) -> None:
    """A victim that never trains."""
    register(
        "fastnet-never-trains", NeverTrains, summary="mutant: fastnet whose weights never move"
    )
