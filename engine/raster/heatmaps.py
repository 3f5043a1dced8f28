"""Heatmap quantisation: class probabilities to integers that sum to exactly the encoding's scale.

Stored values ``q`` read back as ``q / scale`` (GDAL scale ``1 / scale``, offset 0). Two encodings
(:data:`HEATMAP_ENCODINGS`): ``uint16`` (the default: scale :data:`HEATMAP_SCALE` = 10000, one unit = 1e-4, nodata
65535) and the compact ``uint8`` (scale 250, one unit = 0.004, nodata 255; half the bytes to quantise, compress and
store). Whichever is chosen, a reader sees the same probabilities to within one unit of that encoding.

Rounding each class independently would make per-pixel sums drift by up to K/2 units. Cumulative rounding keeps
every sum exact: with ``c_k`` the running sum of the first ``k + 1`` scaled probabilities (so ``c_{K-1}`` is the
scale), ``q_k = round(c_k) - round(c_{k-1})``. The values are non-negative (the running sums never decrease), they
add up to exactly the scale (the last rounded sum *is* the scale), and each is within one unit of its true value
(two roundings of at most half a unit each). The running sums are kept in float64 (exact to ~1e-12 units) and the
work goes one class row at a time over cache-sized chunks, which costs about a fifteenth of the largest-remainder
method used before issue 13 (the stored values can differ from it by one unit; both keep the same bounds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from ..model_card import NODATA_CLASS

__all__ = [
    "HEATMAP_DTYPES",
    "HEATMAP_NODATA",
    "HEATMAP_SCALE",
    "HeatmapDtype",
    "HeatmapEncoding",
    "heatmap_encoding",
    "quantize_probabilities",
    "requantize_heatmaps",
]

#: Integer total of a valid pixel's UInt16 heatmap values (one unit = 1e-4 probability).
HEATMAP_SCALE = 10000
#: UInt16 heatmap value written where there is no prediction.
HEATMAP_NODATA = 65535
#: Pixels quantised at once: the float64 running sums of a chunk stay in the CPU cache.
_CHUNK_PX = 1 << 14

HeatmapDtype = Literal["uint16", "uint8"]
#: Storage types of the heatmaps (``--heatmap-dtype``).
HEATMAP_DTYPES: tuple[str, ...] = get_args(HeatmapDtype)


@dataclass(frozen=True)
class HeatmapEncoding:
    """How heatmaps are stored.

    Attributes:
        dtype: The band data type (``"uint16"`` or ``"uint8"``).
        scale: Integer total of a valid pixel's values; a value ``q`` means probability ``q / scale``.
        nodata: Value written where there is no prediction (above ``scale``).
    """

    dtype: HeatmapDtype
    scale: int
    nodata: int

    @property
    def numpy_dtype(self) -> type[np.unsignedinteger[Any]]:
        """The numpy type of the stored values."""
        return np.uint16 if self.dtype == "uint16" else np.uint8


_ENCODINGS = {
    "uint16": HeatmapEncoding("uint16", HEATMAP_SCALE, HEATMAP_NODATA),
    # 250 units: probabilities in steps of exactly 0.004, and 255 stays free for nodata.
    "uint8": HeatmapEncoding("uint8", 250, 255),
}


def heatmap_encoding(dtype: str = "uint16") -> HeatmapEncoding:
    """The encoding of a heatmap data type from :data:`HEATMAP_DTYPES`.

    Raises:
        ValueError: If ``dtype`` is not one of them (requests check it earlier, with the fix in the message).
    """
    try:
        return _ENCODINGS[dtype]
    except KeyError:
        raise ValueError(f"Unknown heatmap data type '{dtype}'; choose one of: {', '.join(HEATMAP_DTYPES)}.") from None


def quantize_probabilities(
    probs: NDArray[np.floating[Any]], valid: NDArray[np.bool_], encoding: HeatmapEncoding | None = None
) -> NDArray[np.unsignedinteger[Any]]:
    """Quantise (K, ...) probabilities so every valid pixel's K integers sum to exactly the encoding's scale.

    Negative and non-finite values count as 0 and each pixel is renormalised first, so slightly-off inputs (float
    rounding, blended tiles) still sum exactly; a pixel whose values are all 0 gets everything on class 0.

    Args:
        probs: (K, ...) class probabilities.
        valid: Mask with the shape of ``probs[0]``; invalid pixels get the encoding's nodata in every band.
        encoding: The storage encoding; UInt16 (scale 10000) if None.

    Returns:
        (K, ...) integers of the encoding's data type.
    """
    encoding = encoding if encoding is not None else _ENCODINGS["uint16"]
    k = probs.shape[0]
    flat = probs.reshape(k, -1)
    flat_valid = valid.reshape(-1)
    out = np.full(flat.shape, encoding.nodata, dtype=encoding.numpy_dtype)
    if flat_valid.all():  # the common case: no gather/scatter copies
        for start in range(0, flat.shape[1], _CHUNK_PX):
            stop = min(start + _CHUNK_PX, flat.shape[1])
            _cumulative_round(flat[:, start:stop], encoding.scale, out[:, start:stop])
    else:
        keep = np.flatnonzero(flat_valid)
        for start in range(0, keep.size, _CHUNK_PX):
            index = keep[start : start + _CHUNK_PX]
            chunk = np.empty((k, index.size), dtype=encoding.numpy_dtype)
            _cumulative_round(flat[:, index], encoding.scale, chunk)
            out[:, index] = chunk
    return out.reshape(probs.shape)


def _cumulative_round(p: NDArray[np.floating[Any]], scale: int, out: NDArray[np.unsignedinteger[Any]]) -> None:
    """(K, N) non-negative scores -> ``out`` (K, N) integers summing to ``scale`` per column (cumulative rounding)."""
    k = p.shape[0]
    if p.size == 0:
        return
    if not (p.min() >= 0.0 and p.max() < np.inf):  # also catches NaN, for which both comparisons are False
        p = np.clip(np.nan_to_num(p.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    total = p.sum(axis=0, dtype=np.float64)
    empty = total <= 0.0
    if empty.any():  # no mass at all: everything on class 0
        p = p.astype(np.float64)
        p[:, empty] = 0.0
        p[0, empty] = 1.0
        total[empty] = 1.0
    factor = scale / total
    running = np.zeros(p.shape[1], dtype=np.float64)
    previous = np.zeros(p.shape[1], dtype=np.float64)
    rounded = np.empty(p.shape[1], dtype=np.float64)
    for j in range(k - 1):
        running += p[j]
        np.multiply(running, factor, out=rounded)
        np.rint(rounded, out=rounded)
        np.subtract(rounded, previous, out=out[j], casting="unsafe")
        previous, rounded = rounded, previous
    np.subtract(scale, previous, out=out[k - 1], casting="unsafe")


def requantize_heatmaps(
    warped: NDArray[np.floating[Any]], classes: NDArray[np.uint8], encoding: HeatmapEncoding | None = None
) -> NDArray[np.unsignedinteger[Any]]:
    """Re-quantise heatmaps resampled onto another grid, where ``classes`` says which pixels are valid.

    Args:
        warped: (K, h, w) resampled stored values (any scale; the encoding's nodata or non-finite where none).
        classes: (h, w) class raster on the same grid; :data:`NODATA_CLASS` marks invalid pixels.
        encoding: The storage encoding; UInt16 if None.

    Returns:
        (K, h, w) integers summing to the encoding's scale on valid pixels; a valid pixel without resampled
        heatmap values (possible at data edges) gets its whole mass on its class.
    """
    encoding = encoding if encoding is not None else _ENCODINGS["uint16"]
    valid = classes != NODATA_CLASS
    values = np.asarray(warped, dtype=np.float64)
    missing = ~np.isfinite(values).all(axis=0) | (values >= encoding.nodata).any(axis=0)
    values = np.where(missing[None], 0.0, values)
    fallback = valid & (missing | (values.sum(axis=0) <= 0.0))
    if fallback.any():
        one_hot = np.arange(values.shape[0])[:, None] == classes[fallback][None, :]
        values[:, fallback] = one_hot
    return quantize_probabilities(values, valid, encoding)
