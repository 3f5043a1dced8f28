"""BiCoR-Seg's HBIS class heatmaps as per-class probabilities at tile resolution: the one definition for all backends.

Each HBIS layer l of BiCoR-Seg computes, at 1/4 of the input resolution, the heatmap logits
``S_l[n](p) = <Q_n, F_hat(p)> / sqrt(E) / tau``: the similarity between the layer's pixel features and the
embedding of class n (see :mod:`engine.models.hbis`). The model itself reads them as a low-resolution prediction:
training upsamples them bilinearly to the label size (``align_corners=False``) and scores them with a softmax
cross-entropy, and the layer mixes its class FiLM terms with ``softmax(S_l)`` over classes. So the engine
presents them the same way: **bilinear upsampling of the logits to the tile (half-pixel centres, edges clamped,
exactly ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``), then the softmax over the
classes**; values are per-class probabilities in [0, 1] that sum to 1 per pixel, one layer's own "opinion" before
the upsampler and classifier. They are stitched, resampled and written like the class probabilities.

A backend that can return them honours :class:`HbisBackend`. Layers are numbered from 0 (the paper's H_1);
``-1`` means the last layer.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from ..model_card import ModelCard
from .probabilities import softmax

__all__ = [
    "LAST_HBIS_LAYER",
    "HbisBackend",
    "hbis_layer_count",
    "hbis_probabilities",
    "resolve_hbis_layer",
    "upsample_bilinear",
]

#: The HBIS layer a request gets by default: the last one (the one closest to the final prediction).
LAST_HBIS_LAYER = -1


@runtime_checkable
class HbisBackend(Protocol):
    """A backend that can also return one HBIS layer's class heatmaps.

    Attributes:
        hbis_layer_count: HBIS layers whose heatmaps the loaded model can return (0 when it has none).
    """

    hbis_layer_count: int

    def predict_with_hbis(
        self, batch: NDArray[np.float32], layer: int
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(B, C, H, W) tiles -> (class probabilities (B, K, H, W), HBIS heatmaps of ``layer`` (B, K, H, W))."""
        ...


def hbis_layer_count(backend: object) -> int:
    """HBIS layers the backend can return (0 for a backend or model without them)."""
    if not isinstance(backend, HbisBackend):
        return 0
    return int(backend.hbis_layer_count)


def resolve_hbis_layer(layer: int, backend: object, card: ModelCard) -> int:
    """The 0-based HBIS layer a request means (``-1`` = the last), checked against what the model has.

    Raises:
        InvalidInputError: If the model has no HBIS heatmaps (the message says which models do and how to export
            them) or ``layer`` is out of range (the message gives the valid range).
    """
    count = hbis_layer_count(backend)
    if count == 0:
        if card.architecture.startswith("bicorseg"):
            raise InvalidInputError(
                f"Model '{card.name}' ({card.architecture}) was exported without its HBIS heatmap outputs "
                "(heatmap_0, heatmap_1, ...); re-export it with `python -m training.export` with its heatmaps option (or "
                "bicorseg:exportmodel with HEATMAPS checked), or leave HBIS_HEATMAPS empty."
            )
        raise InvalidInputError(
            f"Model '{card.name}' ({card.architecture}) has no HBIS class heatmaps: only BiCoR-Seg models have "
            "them. Leave HBIS_HEATMAPS empty (HEATMAPS gives the class "
            "probabilities of any model), or choose a BiCoR-Seg model."
        )
    if layer == LAST_HBIS_LAYER:
        return count - 1
    if not 0 <= layer < count:
        raise InvalidInputError(
            f"HBIS layer {layer} does not exist: model '{card.name}' has {count} HBIS layers, numbered 0 to "
            f"{count - 1}; set HBIS_LAYER to one of them, or -1 for the last."
        )
    return layer


def _axis_weights(size_in: int, size_out: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """Source indexes and weights of bilinear resizing along one axis, as torch's ``align_corners=False``."""
    scale = size_in / size_out
    source = (np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5
    source = np.maximum(source, 0.0)  # torch clamps negative source coordinates to the first pixel
    lower = np.minimum(np.floor(source).astype(np.intp), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    weight_upper = (source - lower).astype(np.float32)
    return lower, upper, weight_upper


def upsample_bilinear(values: NDArray[np.floating[Any]], height: int, width: int) -> NDArray[np.float32]:
    """Resize (..., h, w) to (..., height, width) bilinearly with half-pixel centres (torch, align_corners=False)."""
    x = np.asarray(values, dtype=np.float32)
    if x.shape[-2:] == (height, width):
        return x
    top, bottom, w_bottom = _axis_weights(x.shape[-2], height)
    rows = x[..., top, :] * (1.0 - w_bottom)[:, None] + x[..., bottom, :] * w_bottom[:, None]
    left, right, w_right = _axis_weights(x.shape[-1], width)
    resized: NDArray[np.float32] = rows[..., left] * (1.0 - w_right) + rows[..., right] * w_right
    return resized


def hbis_probabilities(heatmap_logits: NDArray[np.floating[Any]], height: int, width: int) -> NDArray[np.float32]:
    """(B, K, h, w) HBIS heatmap logits -> (B, K, height, width) per-class probabilities (upsample, then softmax)."""
    return softmax(upsample_bilinear(heatmap_logits, height, width), axis=1)
