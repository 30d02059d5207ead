"""The Deep Hiding objective (paper eqs. 7-11).

    L_total = L_hide + w1 * L_freq + w2 * L_reveal + w3 * L_conc

* L_hide (eq. 7) = max(MSE(x_ue, x_c), eps^2): no pressure while the container stays within
  an RMS distance eps of the clean image, plain MSE beyond it.
* L_freq (eq. 8) = MSE between the LL sub-bands of container and clean image.
* L_reveal (eq. 8) = MSE between the revealed and the true hidden image.
* L_conc (eq. 10) = sum over ordered same-class pairs (i, j) of the cosine distance between
  the flattened extractor features of the perturbations x_ue - x_c. Eq. 10 sums over every
  (i, j) with y_i = y_j, so each unordered pair counts twice; the i = j terms are 0 and are
  left out (a zero feature vector would otherwise add a spurious distance of 1).

The paper calls L_freq and L_reveal "L2 distances"; we take means (MSE), the scale at which
its eq. 7 is written and at which its remark that L_conc is ~1000x the other terms holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ueb_deephiding.wavelets import haar_dwt, low_band


def hide_loss(container: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(F.mse_loss(container, clean), min=eps * eps)


def freq_loss(container: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(low_band(haar_dwt(container)), low_band(haar_dwt(clean)))


def reveal_loss(revealed: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(revealed, hidden)


def concentration_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 10: sum of cosine distances 1 - cos(f_i, f_j) over ordered same-class pairs i != j."""
    f = F.normalize(features.flatten(1), dim=1, eps=1e-12)
    cos = f @ f.t()
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return (1.0 - cos)[same & off_diagonal].sum()


@dataclass(frozen=True)
class LossWeights:
    w_freq: float = 1.0
    w_reveal: float = 1.0
    w_conc: float = 1e-4
    eps: float = 8 / 255


def total_loss(
    clean: torch.Tensor,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    container: torch.Tensor,
    revealed: torch.Tensor,
    features: Callable[[torch.Tensor], torch.Tensor] | None,
    w: LossWeights,
) -> dict[str, torch.Tensor]:
    """All terms and their weighted sum ("total"); `features` None drops L_conc."""
    terms = {
        "hide": hide_loss(container, clean, w.eps),
        "freq": freq_loss(container, clean),
        "reveal": reveal_loss(revealed, hidden),
    }
    if features is not None and w.w_conc != 0:
        terms["conc"] = concentration_loss(features(container - clean), labels)
    else:
        terms["conc"] = container.new_zeros(())
    terms["total"] = (
        terms["hide"]
        + w.w_freq * terms["freq"]
        + w.w_reveal * terms["reveal"]
        + w.w_conc * terms["conc"]
    )
    return terms
