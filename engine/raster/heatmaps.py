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

Cumulative rounding can swap two classes whose probabilities are within two units, so where the classes are the
arg-max of the very values being stored (the heatmaps resampled back onto the input grid, see
:mod:`engine.raster.writer`) ``keep_order=True`` uses the largest-remainder method instead (floor every value, give
the missing units to the largest remainders), which never ranks a smaller probability above a larger one: the
class stays a maximum of its stored heatmaps. :func:`round_probabilities` rounds without the exact sum, for the
intermediate processing grid that is resampled before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "HEATMAP_DTYPES",
    "HEATMAP_NODATA",
    "HEATMAP_SCALE",
    "HeatmapDtype",
    "HeatmapEncoding",
    "heatmap_encoding",
    "quantize_probabilities",
    "round_probabilities",
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
    probs: NDArray[np.floating[Any]],
    valid: NDArray[np.bool_],
    encoding: HeatmapEncoding | None = None,
    keep_order: bool = False,
) -> NDArray[np.unsignedinteger[Any]]:
    """Quantise (K, ...) probabilities so every valid pixel's K integers sum to exactly the encoding's scale.

    Negative and non-finite values count as 0 and each pixel is renormalised first, so slightly-off inputs (float
    rounding, blended tiles) still sum exactly; a pixel whose values are all 0 gets everything on class 0.

    Args:
        probs: (K, ...) class probabilities.
        valid: Mask with the shape of ``probs[0]``; invalid pixels get the encoding's nodata in every band.
        encoding: The storage encoding; UInt16 (scale 10000) if None.
        keep_order: Never store a smaller probability above a larger one of the same pixel (largest remainder,
            slower); the default cumulative rounding may swap values less than two units apart.

    Returns:
        (K, ...) integers of the encoding's data type.
    """
    encoding = encoding if encoding is not None else _ENCODINGS["uint16"]
    rounding = _largest_remainder if keep_order else _cumulative_round
    k = probs.shape[0]
    flat = probs.reshape(k, -1)
    flat_valid = valid.reshape(-1)
    out = np.full(flat.shape, encoding.nodata, dtype=encoding.numpy_dtype)
    if flat_valid.all():  # the common case: no gather/scatter copies
        for start in range(0, flat.shape[1], _CHUNK_PX):
            stop = min(start + _CHUNK_PX, flat.shape[1])
            rounding(flat[:, start:stop], encoding.scale, out[:, start:stop])
    else:
        keep = np.flatnonzero(flat_valid)
        for start in range(0, keep.size, _CHUNK_PX):
            index = keep[start : start + _CHUNK_PX]
            chunk = np.empty((k, index.size), dtype=encoding.numpy_dtype)
            rounding(flat[:, index], encoding.scale, chunk)
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


def _largest_remainder(p: NDArray[np.floating[Any]], scale: int, out: NDArray[np.unsignedinteger[Any]]) -> None:
    """(K, N) non-negative scores -> ``out`` (K, N) integers summing to ``scale``, in the scores' order."""
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
    scaled = p * (scale / total)
    floors = np.floor(scaled)
    # float32 is enough to order remainders: any order keeps every value within one unit of the exact one.
    remainders = (scaled - floors).astype(np.float32)
    deficit = np.clip(scale - floors.sum(axis=0), 0, k)
    # Rank of each class's remainder within its pixel (0 = largest; ties go to the lower class index).
    # K pairwise comparisons beat a per-pixel argsort by an order of magnitude for the small K of land cover.
    ranks: NDArray[Any] = np.zeros(p.shape, dtype=np.int8 if k < 128 else np.int16)
    lower_index = np.arange(k)[:, None] > np.arange(k)[None, :]  # [i, j]: class j comes before class i
    for j in range(k):
        other = remainders[j]
        ranks += (other > remainders) | ((other == remainders) & lower_index[:, j, None])
    floors += ranks < deficit
    out[...] = floors.astype(out.dtype)


def round_probabilities(probs: NDArray[np.floating[Any]], valid: NDArray[np.bool_]) -> NDArray[np.uint16]:
    """Probabilities rounded to units of 1e-4 each, for an intermediate grid that is resampled before it is written.

    Cheaper than :func:`quantize_probabilities` (a pixel's values may sum to within K/2 units of
    :data:`HEATMAP_SCALE`): the writer resamples these onto the input grid, takes the classes there and quantises
    exactly, in the chosen encoding, for the heatmaps it writes. Always UInt16, whatever that encoding.

    Args:
        probs: (K, ...) class probabilities in [0, 1], finite on valid pixels.
        valid: Mask with the shape of ``probs[0]``; invalid pixels get :data:`HEATMAP_NODATA` in every band.
    """
    scaled = np.clip(probs, 0.0, 1.0).astype(np.float32, copy=False) * np.float32(HEATMAP_SCALE)
    rounded: NDArray[np.uint16] = np.rint(scaled, out=scaled).astype(np.uint16)
    rounded[:, ~valid] = HEATMAP_NODATA
    return rounded
