"""The class-wise separability discriminant (CSD) of Ren et al. (ICLR 2023): a Davies-Bouldin
style ratio of within-class spread to between-class distance, small when classes are apart."""

from __future__ import annotations

import torch


def csd_loss(points: torch.Tensor, labels: torch.Tensor, tiny: float = 1e-5) -> torch.Tensor:
    """Mean over ordered pairs of distinct classes (i, j) of (s_i + s_j) / d(c_i, c_j).

    `points` (N, ...) are flattened; c_k is class k's centre and s_k the mean distance of its
    points to it. Classes absent from the batch are skipped; with fewer than two classes the
    loss is zero. As in the official code the spreads s_k enter as constants (they are copied
    out of the graph), so the gradient only pushes the class centres apart.
    """
    flat = points.reshape(points.shape[0], -1)
    centres, spreads = [], []
    for k in torch.unique(labels).tolist():
        members = flat[labels == k]
        centre = members.mean(0)
        centres.append(centre)
        spreads.append((members - centre).norm(dim=1).mean().detach())
    if len(centres) < 2:
        return flat.sum() * 0.0
    c = torch.stack(centres)
    s = torch.stack(spreads)
    off = ~torch.eye(len(c), dtype=torch.bool, device=c.device)
    # Euclidean distances with a floor under the root, so coinciding centres keep a finite gradient.
    between = ((c[:, None] - c[None, :]) ** 2).sum(-1).add(1e-12).sqrt()[off]
    within = (s[:, None] + s[None, :])[off]
    return ((within + tiny) / (between + tiny)).mean()
