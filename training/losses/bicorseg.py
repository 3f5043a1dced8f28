"""BiCoR-Seg's extra supervision: SoftCE + Dice, hierarchical heatmap supervision and the Fisher loss.

BiCoR-Seg (arXiv 2512.20255; code ShiJinghao566/BiCoR-Seg, built on GeoSeg) supervises each HBIS layer's class
heatmap with the main segmentation loss and pushes the per-image class embeddings of each layer apart with a
Fisher discriminant ratio (spec 5.4, 5.5).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InvalidInputError
from training.distributed import process_group_size, scale_rank_gradient, sum_over_ranks

from .cross_entropy import label_smoothed_cross_entropy
from .dice import soft_dice_loss

logger = logging.getLogger(__name__)


def soft_ce_dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    smoothing: float = 0.05,
    geoseg_compat: bool = True,
    dice_smooth: float = 0.05,
    dice_eps: float = 1e-7,
) -> tuple[Tensor, Tensor]:
    """GeoSeg's main loss terms: label-smoothed CE and soft Dice, returned separately (their sum is the loss).

    With ``geoseg_compat`` the CE mean runs over all pixels and the Dice mean over all K classes (decision B10);
    otherwise over valid pixels and present classes.

    Args:
        logits: (B, K, H, W) class logits.
        target: (B, H, W) int64 labels in 0..K-1 or ``ignore_index``.
        ignore_index: Label of ignored pixels.
        smoothing: CE label smoothing ε (BiCoR: 0.05).
        geoseg_compat: Reproduce GeoSeg's means.
        dice_smooth: Dice smoothing (BiCoR: 0.05).
        dice_eps: Dice denominator floor (BiCoR: 1e-7).

    Returns:
        ``(soft_ce, dice)`` scalars.
    """
    ce = label_smoothed_cross_entropy(logits, target, smoothing, ignore_index, "all" if geoseg_compat else "valid")
    dice = soft_dice_loss(logits, target, ignore_index, dice_smooth, dice_eps, count_absent_classes=geoseg_compat)
    return ce, dice


def heatmap_supervision_losses(
    heatmaps: Sequence[Tensor],
    target: Tensor,
    ignore_index: int,
    smoothing: float = 0.05,
    geoseg_compat: bool = True,
    dice_smooth: float = 0.05,
    dice_eps: float = 1e-7,
) -> list[Tensor]:
    """Per-layer heatmap supervision terms [SoftCE + Dice](up(H_l), y), unweighted.

    L_HM = Σ_l β_l·[SoftCE + Dice](up(H_l), y), where up() is bilinear (align_corners False) from the heatmap's
    resolution (1/4) to the label size; the caller applies β_l (all 1 in BiCoR, decision B11).

    Args:
        heatmaps: L tensors (B, K, h, w) of heatmap logits.
        target: (B, H, W) int64 labels.
        ignore_index: Label of ignored pixels.
        smoothing: CE label smoothing ε.
        geoseg_compat: Reproduce GeoSeg's means.
        dice_smooth: Dice smoothing.
        dice_eps: Dice denominator floor.

    Returns:
        One scalar per layer.
    """
    losses = []
    for heatmap in heatmaps:
        upsampled = F.interpolate(heatmap, size=target.shape[-2:], mode="bilinear", align_corners=False)
        ce, dice = soft_ce_dice_loss(upsampled, target, ignore_index, smoothing, geoseg_compat, dice_smooth, dice_eps)
        losses.append(ce + dice)
    return losses


def fisher_discriminant_loss(embeddings: Tensor, between_floor: float = 1e-4, eps: float = 1e-6) -> Tensor:
    """Fisher ratio of within-class to between-class scatter of per-image class embeddings.

    With CE ∈ R^{B×N×E} (image b, class n) and μ_n = mean_b CE[b, n]:

        S_w = mean_{b,n} ‖CE[b, n] - μ_n‖²,   S_b = max(mean_{i<j} ‖μ_i - μ_j‖², floor),   FD = S_w / (S_b + eps).

    The samples are the batch's images, so B >= 2 is required (decision B9).

    Args:
        embeddings: (B, N, E) class embeddings of one layer, B >= 2, N >= 2.
        between_floor: Lower clamp of S_b.
        eps: Added to the denominator.

    Returns:
        Scalar FD.

    Raises:
        InvalidInputError: If the shape is not (B >= 2, N >= 2, E).
    """
    if embeddings.dim() != 3 or embeddings.shape[0] < 2 or embeddings.shape[1] < 2:
        raise InvalidInputError(
            f"Fisher loss needs class embeddings (B >= 2, N >= 2, E), got {tuple(embeddings.shape)}; "
            "train with batch size >= 2 and drop_last=True."
        )
    centres = embeddings.mean(dim=0)
    within = ((embeddings - centres) ** 2).sum(dim=-1).mean()
    num_classes = centres.shape[0]
    pair_sq = ((centres.unsqueeze(0) - centres.unsqueeze(1)) ** 2).sum(dim=-1)
    # The (N, N) matrix holds every unordered pair twice and a zero diagonal.
    between = pair_sq.sum() / (num_classes * (num_classes - 1))
    return within / (between.clamp_min(between_floor) + eps)


def fisher_statistics_loss(embeddings: Tensor, between_floor: float = 1e-4, eps: float = 1e-6) -> tuple[Tensor, int]:
    """The Fisher ratio of :func:`fisher_discriminant_loss` over the images of *all* processes.

    Under ``torchrun`` each process holds only its share of the batch (one image per GPU for BiCoR on ISPRS with the
    documented split), which alone has no within-class scatter. The ratio needs only global statistics, summed over
    processes with :func:`~training.distributed.sum_over_ranks`: the image count B, the class sums Σ_b CE[b, n] (so
    the global centres μ_n) and, in a second reduction, Σ_b ‖CE[b, n] - μ_n‖². The centres enter that scatter
    detached: Σ_b (CE[b, n] - μ_n) = 0 makes its derivative through μ vanish, so the gradient stays exact without
    sending every process's embeddings to every other. The result has the single-process value and (through
    :func:`~training.distributed.scale_rank_gradient`) the single-process gradient under DDP's averaging. In one
    process it equals :func:`fisher_discriminant_loss`.

    Args:
        embeddings: (B_local, N, E) class embeddings of one layer on this process (B_local may be 1 or even 0).
        between_floor: Lower clamp of S_b.
        eps: Added to the denominator.

    Returns:
        ``(FD, global_images)``; FD is a 0 attached to the graph when fewer than 2 images exist globally.

    Raises:
        InvalidInputError: If the shape is not (B, N >= 2, E).
    """
    if embeddings.dim() != 3 or embeddings.shape[1] < 2:
        raise InvalidInputError(f"Fisher loss needs class embeddings (B, N >= 2, E), got {tuple(embeddings.shape)}.")
    # float32 statistics: under AMP the embeddings may be float16, whose squared sums overflow quickly.
    values = embeddings.float()
    count = sum_over_ranks(torch.tensor(float(values.shape[0]), device=values.device))
    images = round(float(count.detach()))
    class_sums = sum_over_ranks(values.sum(dim=0))  # (N, E)
    if images < 2:
        return embeddings.sum() * 0.0, images  # every process takes this branch: the count is global
    centres = class_sums / count
    scatter = sum_over_ranks(((values - centres.detach()) ** 2).sum())
    num_classes = centres.shape[0]
    within = scatter / (count * num_classes)
    pair_sq = ((centres.unsqueeze(0) - centres.unsqueeze(1)) ** 2).sum(dim=-1)
    between = pair_sq.sum() / (num_classes * (num_classes - 1))
    return scale_rank_gradient(within / (between.clamp_min(between_floor) + eps)), images


class FisherDiscriminantLoss(nn.Module):
    """Module form of the Fisher loss; under ``torchrun`` over the global batch, 0 (warned once) below 2 images.

    In one process it is :func:`fisher_discriminant_loss` of the local batch; in a process group it is
    :func:`fisher_statistics_loss`, so its value (and gradient) do not depend on how the batch is split.

    Args:
        between_floor: Lower clamp of S_b.
        eps: Added to the denominator.
    """

    def __init__(self, between_floor: float = 1e-4, eps: float = 1e-6) -> None:
        super().__init__()
        self.between_floor = between_floor
        self.eps = eps
        self._warned_single_image = False

    def _warn_single_image(self) -> None:
        if not self._warned_single_image:
            logger.warning(
                "Fisher loss skipped: a batch of 1 image has no within-class scatter; "
                "use batch size >= 2 with drop_last=True."
            )
            self._warned_single_image = True

    def forward(self, embeddings: Tensor) -> Tensor:
        """FD of (B, N, E) embeddings; 0 (attached to the graph) for a (global) batch of one image."""
        if process_group_size() > 1:
            loss, images = fisher_statistics_loss(embeddings, self.between_floor, self.eps)
            if images < 2:
                self._warn_single_image()
            return loss
        if embeddings.dim() == 3 and embeddings.shape[0] == 1:
            self._warn_single_image()
            return embeddings.sum() * 0.0
        return fisher_discriminant_loss(embeddings, self.between_floor, self.eps)
