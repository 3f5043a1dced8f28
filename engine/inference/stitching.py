"""Stitching: blend overlapping tiles' class probabilities into one raster, one strip at a time.

Each strategy is a *weight profile*: a function giving, along one axis of a tile, how much each pixel of that
tile counts. The 2-D tile weight is the outer product of the row and column profiles. Probabilities (never
argmax labels) are accumulated as ``sum(w * p)`` and ``sum(w)`` and divided at the end, so any positive
weights give a weighted mean and a constant input stays constant.

A model's answer near a tile's edge is made without the context beyond it (the tile ends there; inside the model
it is zero padding), so it depends on where the tile grid falls. Every strategy therefore gives weight 0 to the
outer quarter of the overlap on each side a tile shares with a neighbour (:func:`blind_margin_px`): those pixels
always lie deeper inside the neighbour, which answers for them. A translation-equivariant model whose receptive
field reaches no further than that margin gets exactly the same result wherever the tiles fall. Sides on the
raster border keep their weight (no neighbour covers them).

Strategies, chosen by name from :data:`STITCHING_STRATEGIES`:

* ``"gaussian"``: a Gaussian bump centred on the tile (sigma = tile / 8, as in MONAI), clamped to at least
  ``1e-3`` so the raster's edge pixels, seen by a single tile, still get weight; 0 on the blind margins.
* ``"cosine"``: weight 1 in the tile's interior and a raised-cosine ramp across the middle half of the overlap,
  sampled at pixel centres, so two neighbours' ramps add up to exactly 1 (a partition of unity); 0 on the blind
  margins. Sides on the raster border are not ramped.
* ``"center_crop"``: weight 1 on the tile's core (see :func:`engine.inference.tiling.core_window`), 0 elsewhere; every
  pixel comes from exactly one tile (cheapest, deterministic, may show seams with too small an overlap).

:class:`StripAccumulator` holds only one tile row's worth of rows (``K x tile x width`` float32), hands
finished rows to a sink and reuses its memory, so memory never depends on the raster's height. Given a *region*
(a super-tile of a distributed run) it accumulates only that window's columns and hands out only its rows, while
the weights still come from the global grid: fed the global tiles that overlap the region, in the same order, it
gives every pixel of the region exactly the value the whole-raster run gives it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from ..errors import InvalidInputError
from .tiling import TilingSpec, axis_offsets

__all__ = [
    "STITCHING_STRATEGIES",
    "RowSink",
    "StripAccumulator",
    "WeightProfile",
    "blind_margin_px",
    "center_crop_profile",
    "cosine_profile",
    "gaussian_profile",
    "stitching_names",
    "tile_weights",
]

#: Signature of a strategy: (spec, tile touches the raster's start edge, touches its end edge) -> (T,) weights.
WeightProfile = Callable[[TilingSpec, bool, bool], NDArray[np.float32]]
#: Receives finished rows: (first raster row, probs (K, rows, width), valid (rows, width)).
RowSink = Callable[[int, NDArray[np.float32], NDArray[np.bool_]], None]

_GAUSSIAN_SIGMA_FRACTION = 0.125
_GAUSSIAN_FLOOR = 1e-3
#: Share of the overlap, on each inner side of a tile, whose pixels get no weight from that tile.
BLIND_MARGIN_FRACTION = 0.25


def blind_margin_px(spec: TilingSpec) -> int:
    """Pixels along each inner side of a tile that get weight 0: a quarter of the overlap, rounded down."""
    return int(spec.overlap_px * BLIND_MARGIN_FRACTION)


def gaussian_profile(spec: TilingSpec, at_start: bool, at_end: bool) -> NDArray[np.float32]:
    """Gaussian weights centred on the tile, sigma = tile / 8, floored at 1e-3; 0 on the inner blind margins."""
    size = spec.tile_size_px
    sigma = max(_GAUSSIAN_SIGMA_FRACTION * size, 1.0)
    centres = np.arange(size, dtype=np.float64) + 0.5 - size / 2.0
    profile = np.maximum(np.exp(-0.5 * (centres / sigma) ** 2), _GAUSSIAN_FLOOR)
    margin = blind_margin_px(spec)
    if margin:
        if not at_start:
            profile[:margin] = 0.0
        if not at_end:
            profile[size - margin :] = 0.0
    result: NDArray[np.float32] = profile.astype(np.float32)
    return result


def cosine_profile(spec: TilingSpec, at_start: bool, at_end: bool) -> NDArray[np.float32]:
    """Raised-cosine ramps over the middle of the overlap on inner sides, 0 on the blind margins, 1 elsewhere.

    With blind margin ``m`` and ramp length ``L = O - 2m``, the rising ramp is 0 for ``k < m``,
    ``sin^2(pi (k - m + 0.5) / (2 L))`` for ``m <= k < O - m`` and 1 beyond; the falling ramp of the neighbour over
    the same pixels is its mirror image, ``cos^2`` of the same angle, so the two add up to exactly 1.
    """
    size, overlap = spec.tile_size_px, spec.overlap_px
    profile = np.ones(size, dtype=np.float64)
    if overlap > 0:
        margin = blind_margin_px(spec)
        length = overlap - 2 * margin
        rising = np.ones(overlap, dtype=np.float64)
        rising[:margin] = 0.0
        angles = np.pi * (np.arange(length, dtype=np.float64) + 0.5) / (2.0 * length)
        rising[margin : margin + length] = np.sin(angles) ** 2
        if not at_start:
            profile[:overlap] *= rising
        if not at_end:
            profile[size - overlap :] *= rising[::-1]
    return profile.astype(np.float32)


def center_crop_profile(spec: TilingSpec, at_start: bool, at_end: bool) -> NDArray[np.float32]:
    """1 on the tile's core (half the overlap cut from each inner side), 0 on the discarded margins."""
    size = spec.tile_size_px
    profile = np.zeros(size, dtype=np.float32)
    start = 0 if at_start else spec.margin_start_px
    stop = size if at_end else size - spec.margin_end_px
    profile[start:stop] = 1.0
    return profile


#: Stitching strategies by name (plain dict registry).
STITCHING_STRATEGIES: dict[str, WeightProfile] = {
    "gaussian": gaussian_profile,
    "cosine": cosine_profile,
    "center_crop": center_crop_profile,
}


def stitching_names() -> list[str]:
    """Names accepted as a stitching strategy, sorted."""
    return sorted(STITCHING_STRATEGIES)


def _profile(name: str) -> WeightProfile:
    try:
        return STITCHING_STRATEGIES[name]
    except KeyError:
        raise InvalidInputError(
            f"Unknown stitching strategy '{name}'; choose one of: {', '.join(stitching_names())}."
        ) from None


@functools.lru_cache(maxsize=64)
def _cached_weights(
    name: str, spec: TilingSpec, top: bool, bottom: bool, left: bool, right: bool
) -> NDArray[np.float32]:
    profile = _profile(name)
    weights = np.outer(profile(spec, top, bottom), profile(spec, left, right)).astype(np.float32)
    weights.flags.writeable = False  # shared between calls through the cache
    return weights


def tile_weights(name: str, spec: TilingSpec, window: Window, height: int, width: int) -> NDArray[np.float32]:
    """The (T, T) weight of one tile of a ``height`` x ``width`` raster under strategy ``name`` (read-only)."""
    row_off, col_off = int(window.row_off), int(window.col_off)
    return _cached_weights(
        name,
        spec,
        row_off == 0,
        row_off + spec.tile_size_px >= height,
        col_off == 0,
        col_off + spec.tile_size_px >= width,
    )


class StripAccumulator:
    """Weighted sum of tile probabilities for the rows of the current tile row only.

    Feed it the tiles of one tile row with :meth:`add`, then call :meth:`finish_tile_row`: the rows that no
    later tile can touch are normalised and passed to a sink, and the overlap rows move to the top of the
    buffer for the next tile row. Memory: ``(K + 1) x min(T, height) x width`` float32 (``width`` of the region
    when one is given). A pixel is valid when some tile saw it as valid (invalid pixels get zero weight).
    """

    def __init__(
        self,
        num_classes: int,
        height: int,
        width: int,
        spec: TilingSpec,
        strategy: str = "gaussian",
        region: Window | None = None,
    ) -> None:
        """Allocate the strip.

        Args:
            num_classes: Number of classes K.
            height: Raster height in pixels (the processing grid).
            width: Raster width in pixels.
            spec: The tiling the tiles come from.
            strategy: A name from :data:`STITCHING_STRATEGIES`.
            region: Accumulate only this window of the raster (feed it the global tiles that overlap it, from
                ``iter_tile_rows(..., region=region)``); the whole raster if None.

        Raises:
            ValueError: If ``region`` is empty or not inside the raster (a caller bug).
        """
        _profile(strategy)  # fail early on a bad name
        self.num_classes = num_classes
        self.height = height
        self.width = width
        self.spec = spec
        self.strategy = strategy
        region = Window(0, 0, width, height) if region is None else region
        self._row0, self._col0 = int(region.row_off), int(region.col_off)
        self._row1, self._cols = self._row0 + int(region.height), int(region.width)
        if self._row0 < 0 or self._col0 < 0 or self._row1 > height or self._col0 + self._cols > width:
            raise ValueError(f"Region {region} is not inside the {width} x {height} raster.")
        if self._row1 <= self._row0 or self._cols < 1:
            raise ValueError(f"Region {region} is empty.")
        rows = min(spec.tile_size_px, height)
        self._sum = np.zeros((num_classes, rows, self._cols), dtype=np.float32)
        self._weight = np.zeros((rows, self._cols), dtype=np.float32)
        # Raster row held in buffer row 0 (= origin of the current tile row): the first tile row meeting the region.
        self._top = next(o for o in axis_offsets(height, spec) if o + spec.tile_size_px > self._row0)
        tile = spec.tile_size_px
        self._scratch = np.empty((num_classes, min(tile, rows), min(tile, self._cols)), dtype=np.float32)

    @property
    def top_row(self) -> int:
        """Raster row of the current tile row's origin; rows above it were already handed out."""
        return self._top

    @property
    def nbytes(self) -> int:
        """Bytes held by the strip buffers (and the one-tile scratch buffer)."""
        return self._sum.nbytes + self._weight.nbytes + self._scratch.nbytes

    def add(self, window: Window, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        """Accumulate one tile of the current tile row.

        Args:
            window: The tile's window (from :func:`engine.inference.tiling.iter_tile_rows`); its row offset must be
                :attr:`top_row`.
            probs: (K, T, T) class probabilities of the tile.
            valid: (T, T) valid mask of the tile (False for nodata / masked / outside the raster).
        """
        row_off, col_off = int(window.row_off), int(window.col_off)
        if row_off != self._top:
            raise ValueError(f"Tile at row {row_off} added while accumulating the tile row at {self._top}.")
        rows = min(self.spec.tile_size_px, self.height - row_off)
        # The tile's columns inside the raster and the region, relative to the tile.
        first = max(col_off, self._col0) - col_off
        stop = min(col_off + self.spec.tile_size_px, self.width, self._col0 + self._cols) - col_off
        if stop <= first:
            return  # the tile does not reach the region's columns
        # Invalid pixels get no weight: they add nothing, and a pixel no tile saw as valid stays at weight 0.
        weights = tile_weights(self.strategy, self.spec, window, self.height, self.width)[:rows, first:stop]
        tile_valid = valid[:rows, first:stop]
        if not tile_valid.all():
            weights = weights * tile_valid
        target = np.s_[:rows, col_off + first - self._col0 : col_off + stop - self._col0]
        # Weighted into a reused buffer: a fresh (K, T, T) temporary per tile costs page faults at every tile.
        weighted = np.multiply(probs[:, :rows, first:stop], weights, out=self._scratch[:, :rows, : stop - first])
        self._sum[(slice(None), *target)] += weighted
        self._weight[target] += weights

    def finish_tile_row(self, sink: RowSink, max_rows: int = 256) -> int:
        """Hand the rows finished by the current tile row to ``sink`` and move on to the next tile row.

        The arrays given to ``sink`` are views into the buffer, valid only during the call; invalid pixels
        and pixels no tile weighted get probability 0 and ``valid`` False. With a region, only its rows and
        columns are handed out (``row_off`` stays a raster row; ``width`` is the region's).

        Args:
            sink: Called with ``(row_off, probs (K, rows, width), valid (rows, width))`` in row order.
            max_rows: Largest number of rows per call (bounds the sink's temporary memory).

        Returns:
            The number of rows the tile row finished (handed out where inside the region).
        """
        rows_in_use = min(self.spec.tile_size_px, self.height - self._top)
        is_last = self._top + self.spec.tile_size_px >= self.height
        done = rows_in_use if is_last else self.spec.stride_px
        first = max(self._top, self._row0) - self._top
        last = min(self._top + done, self._row1) - self._top
        if last > first:
            weight = self._weight[first:last]
            valid = weight > 0
            for start in range(first, last, max_rows):
                stop = min(start + max_rows, last)
                # Pixels with no weight have a zero sum too, so dividing by a tiny floor leaves them at 0. Dividing
                # chunk by chunk keeps the chunk in the CPU cache for the sink, which reads it next.
                chunk = self._sum[:, start:stop]
                np.divide(chunk, np.maximum(weight[start - first : stop - first], np.float32(1e-30)), out=chunk)
                sink(self._top + start, chunk, valid[start - first : stop - first])
        carried = rows_in_use - done
        for plane in (self._sum, self._weight):
            plane[..., :carried, :] = plane[..., done : done + carried, :]
            plane[..., carried:, :] = 0
        self._top += done
        return done
