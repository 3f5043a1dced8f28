"""CEA: Hi-ResNet's class-agnostic edge-aware loss, a differentiable multi-class Hausdorff-distance-style loss.

Hi-ResNet (Chen et al., IEEE JSTARS 17:15024-15040, 2024) picks a random class against the rest and weights the
squared probability error by distance-to-boundary maps approximated with cascaded erosions. The public repo's
version works on the argmax and has no gradient (decision H6); this is the differentiable form of the spec (5.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InvalidInputError

from .distance_maps import inside_outside_distances


def pick_present_class(target: Tensor, ignore_index: int, generator: torch.Generator | None = None) -> int | None:
    """Draw one class uniformly among the classes present in the batch's valid labels.

    Args:
        target: (B, H, W) int64 labels.
        ignore_index: Label of ignored pixels (never drawn).
        generator: CPU random generator, for reproducible draws.

    Returns:
        The class index, or None when every pixel is ignored.
    """
    present = torch.unique(target[target != ignore_index]).cpu()
    if present.numel() == 0:
        return None
    choice = torch.randint(present.numel(), (1,), generator=generator)
    return int(present[choice].item())


def class_agnostic_edge_aware_loss(
    logits: Tensor,
    target: Tensor,
    class_index: int,
    ignore_index: int,
    max_distance_px: int = 32,
    exponent: float = 2.0,
) -> Tensor:
    """CEA for one class c against the rest, on the batch's valid pixels Ω.

    With G = 1[y = c] on Ω, P = p_c (softmax probability) and D = d_in + d_out the capped 4-neighbour
    distance-to-boundary map (no gradient, cap T; ignored pixels count as outside):

        L = (1/|Ω|)·Σ_{i∈Ω} (P_i - G_i)²·((D_G,i / T)^α + (D_P,i / T)^α),

    where D_P is the map of the hard prediction 1[argmax = c] on Ω. Both maps are >= 1 everywhere (every pixel is
    inside or outside), so every error is penalised and far-from-boundary errors most.

    Args:
        logits: (B, K, H, W) class logits.
        target: (B, H, W) int64 labels in 0..K-1 or ``ignore_index``.
        class_index: The class c (see :func:`pick_present_class`).
        ignore_index: Label of ignored pixels.
        max_distance_px: T, the cap on the distance maps (spec: 32).
        exponent: α (spec: 2).

    Returns:
        Scalar loss; 0 (attached to the graph) when no pixel is valid.

    Raises:
        InvalidInputError: If ``class_index`` is not a class of ``logits``.
    """
    num_classes = logits.shape[1]
    if not 0 <= class_index < num_classes:
        raise InvalidInputError(f"CEA class {class_index} is outside 0..{num_classes - 1}; pick a class of the model.")
    valid = target != ignore_index
    probs = F.softmax(logits, dim=1)[:, class_index]
    with torch.no_grad():
        gt_region = (target == class_index) & valid
        pred_region = (logits.max(dim=1).indices == class_index) & valid
        d_in, d_out = inside_outside_distances(torch.stack([gt_region, pred_region], dim=1), max_distance_px)
        distance = d_in + d_out
        weight = (distance[:, 0] / max_distance_px) ** exponent + (distance[:, 1] / max_distance_px) ** exponent
    error = (probs - gt_region.to(probs.dtype)) ** 2
    return (error * weight * valid).sum() / valid.sum().clamp_min(1)


class ClassAgnosticEdgeAwareLoss(nn.Module):
    """Module form of :func:`class_agnostic_edge_aware_loss` that draws its class from the labels.

    Args:
        ignore_index: Label of ignored pixels.
        max_distance_px: Distance cap T.
        exponent: α.
        seed: Seed of the private generator that draws the class (None: torch's global generator).
    """

    def __init__(
        self, ignore_index: int, max_distance_px: int = 32, exponent: float = 2.0, seed: int | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.max_distance_px = max_distance_px
        self.exponent = exponent
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)

    def forward(self, logits: Tensor, target: Tensor, class_index: int | None = None) -> Tensor:
        """Loss for ``class_index``, or for a class drawn among the present ones when it is None."""
        if class_index is None:
            class_index = pick_present_class(target, self.ignore_index, self.generator)
        if class_index is None:
            return logits.sum() * 0.0
        return class_agnostic_edge_aware_loss(
            logits, target, class_index, self.ignore_index, self.max_distance_px, self.exponent
        )
