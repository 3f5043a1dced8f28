"""Resampling between the processing grid and the input grid: a per-axis scaling and offset.

The processing grid is the input grid scaled in pixel space (same bounds, same rotation), or, for a north-up
projected raster, a grid on the CRS lattice of the model's GSD whose origin lies less than a cell before the
input's (see :mod:`engine.raster.resolution`). Either way each axis maps by ``x_source = offset + x_output *
scale`` in pixel units, so going back needs no geodesy: each output row and column is a fixed weighted sum of a
few source rows and columns. Along an axis where the output is finer (the usual case: the
model's pixels are coarser than the input's) the weights are bilinear between the two nearest source pixel
centres (clamped at the edges); where the output is coarser they are the overlap of the output pixel with each
source pixel (an area average). Nodata source pixels get weight 0 and each output pixel is renormalised by the
weight that is left, so values never mix with nodata; :meth:`GridResampler.nearest` gives the nearest source
pixel for output pixels no valid weight reaches. Separable and chunked: memory is bounded by the chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.windows import Window

__all__ = ["AxisMap", "AxisWeights", "GridResampler", "axis_maps", "axis_weights"]

#: ``(scale, offset)`` of one axis: output pixel edge ``x`` lies at ``offset + x * scale`` source pixels.
AxisMap = tuple[float, float]


def axis_maps(source: Affine, output: Affine) -> tuple[AxisMap, AxisMap]:
    """Row and column maps from an output grid to a source grid, both north-up, or sharing bounds and rotation.

    Args:
        source: The source grid's transform (the processing grid).
        output: The output grid's transform (the input grid).

    Returns:
        ``(rows, cols)``: each ``(output pixel size / source pixel size, output origin in source pixels)``.
    """
    # In the source's pixel space the output grid's origin and pixel vectors; both grids are axis-aligned there.
    inverse = ~source
    x0, y0 = inverse * (output.c, output.f)
    x1, _ = inverse * (output.c + output.a, output.f + output.d)
    _, y1 = inverse * (output.c + output.b, output.f + output.e)
    return (y1 - y0, y0), (x1 - x0, x0)


#: Reads (K, h, w) stored values of a window of the source grid (inside it).
ReadWindow = Callable[[Window], NDArray[np.float32]]


@dataclass(frozen=True)
class AxisWeights:
    """Source taps of every output pixel along one axis.

    Attributes:
        index: (T, n_out) source pixel of each tap.
        weight: (T, n_out) weight of each tap; the weights of an output pixel sum to 1.
        nearest: (n_out,) the source pixel whose centre is nearest.
    """

    index: NDArray[np.intp]
    weight: NDArray[np.float32]
    nearest: NDArray[np.intp]


def axis_weights(source_px: int, output_px: int, mapping: AxisMap | None = None) -> AxisWeights:
    """Bilinear taps where the output is finer than the source, area-overlap taps where it is coarser.

    Args:
        source_px: Pixels of the source axis.
        output_px: Pixels of the output axis.
        mapping: ``(scale, offset)`` of :func:`axis_maps`; None: the two axes share their extent.
    """
    scale, offset = (source_px / output_px, 0.0) if mapping is None else mapping  # source pixels per output pixel
    centres = offset + (np.arange(output_px) + 0.5) * scale  # in source pixel units
    nearest = np.clip(np.floor(centres).astype(np.intp), 0, source_px - 1)
    if scale <= 1.0:
        x = centres - 0.5
        low = np.floor(x)
        frac = (x - low).astype(np.float32)
        index = np.clip(np.stack([low, low + 1]).astype(np.intp), 0, source_px - 1)
        weight = np.stack([1.0 - frac, frac]).astype(np.float32)
        return AxisWeights(index, weight, nearest)
    taps = math.ceil(scale) + 1
    start = offset + np.arange(output_px) * scale
    first = np.floor(start).astype(np.intp)
    index = first[None, :] + np.arange(taps)[:, None]
    overlap = np.minimum(index + 1, start + scale) - np.maximum(index, start)
    weight = np.clip(overlap, 0.0, None) / scale
    index = np.clip(index, 0, source_px - 1)
    return AxisWeights(index, weight.astype(np.float32), nearest)


class GridResampler:
    """Resamples (K, H, W) stored values from a source grid to an output grid (same bounds, or axis maps).

    Args:
        source_shape: (rows, cols) of the source grid.
        output_shape: (rows, cols) of the output grid.
        nodata: The stored value of pixels without data (in every band).
        maps: ``(rows, cols)`` axis maps (:func:`axis_maps`); None: the grids share their bounds.
    """

    def __init__(
        self,
        source_shape: tuple[int, int],
        output_shape: tuple[int, int],
        nodata: float,
        maps: tuple[AxisMap, AxisMap] | None = None,
    ) -> None:
        rows, cols = (None, None) if maps is None else maps
        self.rows = axis_weights(source_shape[0], output_shape[0], rows)
        self.cols = axis_weights(source_shape[1], output_shape[1], cols)
        self.nodata = nodata

    def resample(self, read: ReadWindow, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Values (K, h, w) of an output window and where they are present (some valid source weight).

        Args:
            read: Reads stored values of a source window.
            window: The output window (inside the output grid).
        """
        row_idx, row_w, r0, c0, source = self._source(read, window)
        col_idx, col_w = self._cols(window)
        valid = np.all(source != self.nodata, axis=0)
        if valid.all():  # the common case: the weights of every output pixel sum to 1
            values = _weighted(_weighted(source, row_idx - r0, row_w, axis=1), col_idx - c0, col_w, axis=2)
            return values, np.ones(values.shape[1:], dtype=bool)
        mask = valid.astype(np.float32)[None]
        source = np.where(valid[None], source, np.float32(0.0))
        # Values and mask with the same weights: the division renormalises by the weight of valid sources.
        values = _weighted(_weighted(source, row_idx - r0, row_w, axis=1), col_idx - c0, col_w, axis=2)
        weight = _weighted(_weighted(mask, row_idx - r0, row_w, axis=1), col_idx - c0, col_w, axis=2)[0]
        present = np.asarray(weight > 1e-6, dtype=bool)
        values /= np.where(present, weight, np.float32(1.0))[None]
        return values, present

    def nearest(self, read: ReadWindow, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Values (K, h, w) of the nearest source pixel of each output pixel, and where that pixel has data."""
        _, _, r0, c0, source = self._source(read, window)
        rows = self.rows.nearest[_span(window.row_off, window.height)] - r0
        cols = self.cols.nearest[_span(window.col_off, window.width)] - c0
        values = source[:, rows[:, None], cols[None, :]]
        return values, np.all(values != self.nodata, axis=0)

    def _cols(self, window: Window) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        span = _span(window.col_off, window.width)
        return self.cols.index[:, span], self.cols.weight[:, span]

    def _source(
        self, read: ReadWindow, window: Window
    ) -> tuple[NDArray[np.intp], NDArray[np.float32], int, int, NDArray[np.float32]]:
        rows = _span(window.row_off, window.height)
        row_idx, row_w = self.rows.index[:, rows], self.rows.weight[:, rows]
        col_idx, _ = self._cols(window)
        r0, r1 = int(row_idx.min()), int(row_idx.max()) + 1
        c0, c1 = int(col_idx.min()), int(col_idx.max()) + 1
        source = np.asarray(read(Window(c0, r0, c1 - c0, r1 - r0)), dtype=np.float32)
        return row_idx, row_w, r0, c0, source


def _weighted(
    values: NDArray[np.float32], index: NDArray[np.intp], weight: NDArray[np.float32], axis: int
) -> NDArray[np.float32]:
    """Sum over taps of ``values`` taken at ``index[t]`` along ``axis``, times ``weight[t]`` (broadcast on it)."""
    shape = [1] * values.ndim
    shape[axis] = -1
    out: NDArray[np.float32] = np.take(values, index[0], axis=axis)
    out *= weight[0].reshape(shape)
    for t in range(1, len(index)):
        tap = np.take(values, index[t], axis=axis)
        tap *= weight[t].reshape(shape)
        out += tap
    return out


def _span(offset: float, length: float) -> slice:
    return slice(int(offset), int(offset) + int(length))
