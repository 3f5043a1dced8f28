"""Label-smoothed cross-entropy: the standard form (Hi-ResNet LSCE) and GeoSeg's "SoftCE" mean over all pixels."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InvalidInputError

#: Which pixels the mean runs over: "valid" (non-ignored, standard) or "all" (GeoSeg SoftCE, ignored count as 0).
MeanOver = Literal["valid", "all"]
#: Where the smoothing mass ε goes: "uniform" over all K classes (ε/K each, the true class included: torch's and
#: GeoSeg's SoftCE) or "others" over the K-1 wrong classes (ε/(K-1) each, true class 1 - ε: Hi-ResNet eq. 4).
SmoothingSpread = Literal["uniform", "others"]


def label_smoothed_cross_entropy(
    logits: Tensor,
    target: Tensor,
    smoothing: float,
    ignore_index: int,
    mean_over: MeanOver = "valid",
    spread: SmoothingSpread = "uniform",
) -> Tensor:
    """Cross-entropy against label-smoothed targets, masked at ignored pixels.

    Per pixel i with label y_i and K classes, with ``spread="uniform"`` q_ic = (1 - ε)·g_ic + ε/K:

        ℓ_i = -Σ_c q_ic·log p_ic = (1 - ε)·(-log p_{i,y_i}) + (ε/K)·Σ_c(-log p_ic),

    and with ``spread="others"`` (Hi-ResNet eq. 4) q_{i,y_i} = 1 - ε and q_ic = ε/(K - 1) for c ≠ y_i:

        ℓ_i = (1 - ε)·(-log p_{i,y_i}) + (ε/(K - 1))·Σ_{c≠y_i}(-log p_ic),

    and L = (1/|Ω|)·Σ_{i∈Ω} ℓ_i for ``mean_over="valid"`` (Ω = non-ignored pixels), or
    L = (1/(B·H·W))·Σ_{i∈Ω} ℓ_i for ``mean_over="all"``, GeoSeg's SoftCE, where ignored pixels count as 0 in the
    mean (decision B10). With no valid pixel the loss is 0 (still attached to the graph).

    Args:
        logits: (B, K, H, W) class logits.
        target: (B, H, W) int64 labels in 0..K-1 or ``ignore_index``.
        smoothing: ε in [0, 1).
        ignore_index: Label of ignored pixels.
        mean_over: "valid" or "all".
        spread: "uniform" (ε/K on every class) or "others" (ε/(K-1) on the wrong classes).

    Returns:
        Scalar loss.

    Raises:
        InvalidInputError: If ``smoothing`` is outside [0, 1), or ``mean_over`` or ``spread`` is unknown.
    """
    if not 0.0 <= smoothing < 1.0:
        raise InvalidInputError(f"label smoothing is {smoothing}; use a value in [0, 1), e.g. 0.1 or 0.05.")
    if mean_over not in ("valid", "all"):
        raise InvalidInputError(f"mean_over is {mean_over!r}; use 'valid' or 'all'.")
    if spread not in ("uniform", "others"):
        raise InvalidInputError(f"label smoothing spread is {spread!r}; use 'uniform' or 'others'.")
    valid = target != ignore_index
    # Any in-range label works at ignored pixels: their term is zeroed below.
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    log_probs = F.log_softmax(logits, dim=1)
    nll = -log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    num_classes = logits.shape[1]
    if spread == "uniform":
        smooth = -log_probs.sum(dim=1) / num_classes
    else:
        smooth = (-log_probs.sum(dim=1) - nll) / max(num_classes - 1, 1)
    per_pixel = ((1.0 - smoothing) * nll + smoothing * smooth) * valid
    if mean_over == "all":
        return per_pixel.mean()
    return per_pixel.sum() / valid.sum().clamp_min(1)


class LabelSmoothedCrossEntropy(nn.Module):
    """Module form of :func:`label_smoothed_cross_entropy`.

    Args:
        smoothing: ε; 0.1 for Hi-ResNet's LSCE, 0.05 for BiCoR-Seg's SoftCE.
        ignore_index: Label of ignored pixels.
        mean_over: "valid" (standard) or "all" (GeoSeg SoftCE, ``geoseg_compat``).
        spread: "uniform" (GeoSeg, ε/K) or "others" (Hi-ResNet eq. 4, ε/(K-1)).
    """

    def __init__(
        self, smoothing: float, ignore_index: int, mean_over: MeanOver = "valid", spread: SmoothingSpread = "uniform"
    ) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.ignore_index = ignore_index
        self.mean_over: MeanOver = mean_over
        self.spread: SmoothingSpread = spread

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of (B, K, H, W) logits against (B, H, W) labels."""
        return label_smoothed_cross_entropy(
            logits, target, self.smoothing, self.ignore_index, self.mean_over, self.spread
        )
