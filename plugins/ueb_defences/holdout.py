"""A stratified held-out part of the training set, drawn from the run seed."""

from __future__ import annotations

import torch

from ueb.imageset import ImageSet


def holdout_split(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(fit part, held-out part): `fraction` of every class held out, at least one image of
    each class with two or more, positions drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    keep: list[torch.Tensor] = []
    held: list[torch.Tensor] = []
    for c in range(train.num_classes):
        idx = torch.nonzero(train.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:k])
        keep.append(idx[k:])
    fit_idx = torch.sort(torch.cat(keep)).values
    held_idx = torch.sort(torch.cat(held)).values
    return train.subset(fit_idx), train.subset(held_idx)
