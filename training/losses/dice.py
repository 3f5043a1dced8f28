"""Dice losses over the whole batch: generalised Dice (Sudre et al. 2017) and GeoSeg's per-class soft Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _batch_class_sums(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class sums over the valid pixels of the batch.

    Returns:
        ``(intersection, prob_sum, label_count)``, each (K,): Σ_{i∈Ω} p_ic·g_ic, Σ_{i∈Ω} p_ic and Σ_{i∈Ω} g_ic.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = F.softmax(logits, dim=1) * valid
    safe_target = torch.where(target != ignore_index, target, torch.zeros_like(target))
    onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    return (probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)


def generalized_dice_loss(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Generalised Dice loss (Sudre et al. 2017) over the batch's valid pixels Ω.

        L = 1 - 2·Σ_c w_c·Σ_{i∈Ω} p_ic·g_ic / Σ_c w_c·Σ_{i∈Ω} (p_ic + g_ic),   w_c = 1 / (Σ_{i∈Ω} g_ic)²,

    where a class absent from the batch's labels takes the largest weight among the present classes (MONAI's
    rule, decision H7), instead of a huge weight that would turn the loss into an absent-class suppressor.
    Ignored pixels are masked out (not relabelled). With no valid pixel the loss is 0 (attached to the graph).

    Args:
        logits: (B, K, H, W) class logits.
        target: (B, H, W) int64 labels in 0..K-1 or ``ignore_index``.
        ignore_index: Label of ignored pixels.

    Returns:
        Scalar loss in [0, 1].
    """
    intersection, prob_sum, label_count = _batch_class_sums(logits, target, ignore_index)
    present = label_count > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    weights = torch.where(present, 1.0 / label_count.clamp_min(1.0) ** 2, torch.zeros_like(label_count))
    weights = torch.where(present, weights, weights.max())
    numerator = 2.0 * (weights * intersection).sum()
    denominator = (weights * (prob_sum + label_count)).sum()
    return 1.0 - numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    smooth: float = 0.05,
    eps: float = 1e-7,
    count_absent_classes: bool = True,
) -> Tensor:
    """BiCoR-Seg's (GeoSeg's) soft Dice: one Dice per class over the batch's valid pixels, then the mean.

        D_c = (2·Σ_{i∈Ω} p_ic·g_ic + s) / max(Σ_{i∈Ω}(p_ic + g_ic) + s, eps),   ℓ_c = (1 - D_c)·1[Σ_{i∈Ω} g_ic > 0],

    L = mean over all K classes of ℓ_c when ``count_absent_classes`` (GeoSeg: absent classes are zeroed but still
    counted, decision B10), else the mean over the present classes only.

    Args:
        logits: (B, K, H, W) class logits.
        target: (B, H, W) int64 labels in 0..K-1 or ``ignore_index``.
        ignore_index: Label of ignored pixels.
        smooth: s, added to numerator and denominator.
        eps: Lower bound of the denominator.
        count_absent_classes: Divide by K (GeoSeg) instead of by the number of present classes.

    Returns:
        Scalar loss.
    """
    intersection, prob_sum, label_count = _batch_class_sums(logits, target, ignore_index)
    dice = (2.0 * intersection + smooth) / (prob_sum + label_count + smooth).clamp_min(eps)
    present = label_count > 0
    per_class = (1.0 - dice) * present
    if count_absent_classes:
        return per_class.mean()
    return per_class.sum() / present.sum().clamp_min(1)


class GeneralizedDiceLoss(nn.Module):
    """Module form of :func:`generalized_dice_loss` (Hi-ResNet's GD term).

    Args:
        ignore_index: Label of ignored pixels.
    """

    def __init__(self, ignore_index: int) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of (B, K, H, W) logits against (B, H, W) labels."""
        return generalized_dice_loss(logits, target, self.ignore_index)


class SoftDiceLoss(nn.Module):
    """Module form of :func:`soft_dice_loss` (BiCoR-Seg's Dice term).

    Args:
        ignore_index: Label of ignored pixels.
        smooth: Additive smoothing s.
        eps: Lower bound of the denominator.
        count_absent_classes: GeoSeg's mean over all K classes (True) or over present classes (False).
    """

    def __init__(
        self, ignore_index: int, smooth: float = 0.05, eps: float = 1e-7, count_absent_classes: bool = True
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.eps = eps
        self.count_absent_classes = count_absent_classes

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of (B, K, H, W) logits against (B, H, W) labels."""
        return soft_dice_loss(logits, target, self.ignore_index, self.smooth, self.eps, self.count_absent_classes)
