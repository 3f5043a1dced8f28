"""Training losses of Hi-ResNet and BiCoR-Seg (plus the Lossd plug-in) and ``build_loss``, which picks a recipe.

``build_loss(model_name, LossConfig(num_classes=K, ignore_index=...))`` returns a callable taking a model's
:class:`~engine.models.outputs.SegmentationOutput` and (B, H, W) labels and returning ``(total, parts)``.
Formulas are in each function's docstring (spec: models-spec.md section 5).
"""

from __future__ import annotations

from .bicorseg import (
    FisherDiscriminantLoss,
    fisher_discriminant_loss,
    fisher_statistics_loss,
    heatmap_supervision_losses,
    soft_ce_dice_loss,
)
from .cea import ClassAgnosticEdgeAwareLoss, class_agnostic_edge_aware_loss, pick_present_class
from .composite import BiCoRSegLoss, HiResNetLoss, ReferenceLoss, SegmentationLoss, build_loss
from .config import DEFAULT_LABEL_SMOOTHING, LossConfig, ModelFamily, resolve_model_family
from .cross_entropy import LabelSmoothedCrossEntropy, label_smoothed_cross_entropy
from .dice import GeneralizedDiceLoss, SoftDiceLoss, generalized_dice_loss, soft_dice_loss
from .distance_maps import inside_outside_distances, region_depth
from .lossd import DistanceLoss, distance_loss, straight_through_mask

__all__ = [
    "DEFAULT_LABEL_SMOOTHING",
    "BiCoRSegLoss",
    "ClassAgnosticEdgeAwareLoss",
    "DistanceLoss",
    "FisherDiscriminantLoss",
    "GeneralizedDiceLoss",
    "HiResNetLoss",
    "LabelSmoothedCrossEntropy",
    "LossConfig",
    "ModelFamily",
    "ReferenceLoss",
    "SegmentationLoss",
    "SoftDiceLoss",
    "build_loss",
    "class_agnostic_edge_aware_loss",
    "distance_loss",
    "fisher_discriminant_loss",
    "fisher_statistics_loss",
    "generalized_dice_loss",
    "heatmap_supervision_losses",
    "inside_outside_distances",
    "label_smoothed_cross_entropy",
    "pick_present_class",
    "region_depth",
    "resolve_model_family",
    "soft_ce_dice_loss",
    "soft_dice_loss",
    "straight_through_mask",
]
