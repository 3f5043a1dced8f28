"""Heatmap quantisation: class probabilities to UInt16 integers that sum to exactly :data:`HEATMAP_SCALE`.

Stored values ``q`` read back as ``q / HEATMAP_SCALE`` (GDAL scale ``1 / HEATMAP_SCALE``, offset 0). Rounding each
class independently would make per-pixel sums drift by up to K/2 units; the largest-remainder method (floor every
value, then give the missing units to the largest remainders) keeps every valid pixel's sum exact, so the
probabilities read back sum to 1, and each value is within one unit (1e-4) of the true probability.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Integer total of a valid pixel's heatmap values (one unit = 1e-4 probability).
HEATMAP_SCALE = 10000
#: Heatmap value written where there is no prediction.
HEATMAP_NODATA = 65535
#: Pixels quantised at once (bounds the float64 temporaries on wide rasters).
_CHUNK_PX = 1 << 18


def quantize_probabilities(probs: NDArray[np.floating[Any]], valid: NDArray[np.bool_]) -> NDArray[np.uint16]:
    """Quantise (K, ...) probabilities so every valid pixel's K integers sum to exactly :data:`HEATMAP_SCALE`.

    Negative and non-finite values count as 0 and each pixel is renormalised first, so slightly-off inputs (float
    rounding, blended tiles) still sum exactly; a pixel whose values are all 0 gets everything on class 0.

    Args:
        probs: (K, ...) class probabilities.
        valid: Mask with the shape of ``probs[0]``; invalid pixels get :data:`HEATMAP_NODATA` in every band.

    Returns:
        (K, ...) uint16.
    """
    k = probs.shape[0]
    flat = probs.reshape(k, -1)
    flat_valid = valid.reshape(-1)
    out = np.full(flat.shape, HEATMAP_NODATA, dtype=np.uint16)
    for start in range(0, flat.shape[1], _CHUNK_PX):
        stop = min(start + _CHUNK_PX, flat.shape[1])
        chunk_valid = flat_valid[start:stop]
        if chunk_valid.all():  # the common case: no gather/scatter copies
            out[:, start:stop] = _largest_remainder(flat[:, start:stop])
            continue
        keep = np.flatnonzero(chunk_valid) + start
        if keep.size:
            out[:, keep] = _largest_remainder(flat[:, keep])
    return out.reshape(probs.shape)


def _largest_remainder(p: NDArray[np.floating[Any]]) -> NDArray[np.uint16]:
    """(K, N) non-negative scores -> (K, N) integers summing to HEATMAP_SCALE per column."""
    k = p.shape[0]
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        p = np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(p, 0.0, None, out=p)
    total = p.sum(axis=0)
    empty = total <= 0.0
    if empty.any():
        p[:, empty] = 0.0
        p[0, empty] = 1.0
        total[empty] = 1.0
    scaled = p * (HEATMAP_SCALE / total)
    floors = np.floor(scaled)
    # float32 is enough to order remainders: any order keeps every value within one unit of the exact one.
    remainders = (scaled - floors).astype(np.float32)
    deficit = np.clip(HEATMAP_SCALE - floors.sum(axis=0), 0, k)
    # Rank of each class's remainder within its pixel (0 = largest; ties go to the lower class index).
    # K pairwise comparisons beat a per-pixel argsort by an order of magnitude for the small K of land cover.
    ranks: NDArray[Any] = np.zeros(p.shape, dtype=np.int8 if k < 128 else np.int16)
    lower_index = np.arange(k)[:, None] > np.arange(k)[None, :]  # [i, j]: class j comes before class i
    for j in range(k):
        other = remainders[j]
        ranks += (other > remainders) | ((other == remainders) & lower_index[:, j, None])
    floors += ranks < deficit
    result: NDArray[np.uint16] = floors.astype(np.uint16)
    return result


def round_probabilities(probs: NDArray[np.floating[Any]], valid: NDArray[np.bool_]) -> NDArray[np.uint16]:
    """Probabilities rounded to units of 1e-4 each, for an intermediate grid that is resampled before it is written.

    Cheaper than :func:`quantize_probabilities` (a pixel's values may sum to within K/2 units of
    :data:`HEATMAP_SCALE`): the writer resamples these onto the input grid, takes the classes there and quantises
    exactly for the heatmaps it writes.

    Args:
        probs: (K, ...) class probabilities in [0, 1], finite on valid pixels.
        valid: Mask with the shape of ``probs[0]``; invalid pixels get :data:`HEATMAP_NODATA` in every band.
    """
    scaled = np.clip(probs, 0.0, 1.0).astype(np.float32, copy=False) * np.float32(HEATMAP_SCALE)
    rounded: NDArray[np.uint16] = np.rint(scaled, out=scaled).astype(np.uint16)
    rounded[:, ~valid] = HEATMAP_NODATA
    return rounded
