"""Typed model outputs, so callers never guess meaning from tuple lengths."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class SegmentationOutput:
    """What every segmentation model returns.

    Attributes:
        logits: Main class logits (B, K, H, W) at input resolution. For Hi-ResNet in eval mode this is
            coarse + refined (the paper's inference rule).
        aux_logits: Coarse / auxiliary logits (B, K, H, W); training mode only, else None.
        refined_logits: Hi-ResNet's refined-head logits alone (B, K, H, W), when the model has them.
        heatmaps: Per-layer class heatmap logits, each (B, K, h, w) at the layer's resolution (BiCoR-Seg HBIS);
            empty when the model has none.
        class_embeddings: Per-layer class embeddings, each (B, K, E) (BiCoR-Seg); training mode only.
        initial_class_embeddings: The static class dictionary (K, E) or (B, K, E) before refinement, if any.
    """

    logits: Tensor
    aux_logits: Tensor | None = None
    refined_logits: Tensor | None = None
    heatmaps: tuple[Tensor, ...] = ()
    class_embeddings: tuple[Tensor, ...] = ()
    initial_class_embeddings: Tensor | None = None
