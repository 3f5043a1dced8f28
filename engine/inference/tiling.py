"""Tiling: cut a raster's pixel grid into overlapping, model-sized windows.

Tiles sit on a regular grid with offsets ``0, S, 2S, ...`` where the stride ``S = T - O`` (tile size ``T``,
overlap ``O``). Along an axis of ``n`` pixels there are ``1`` tile when ``n <= T`` and otherwise
``ceil((n - T) / S) + 1`` tiles, so the last tile reaches or passes the far edge. Tiles that pass the right or
bottom edge (and every tile of a raster smaller than one tile) are read *boundless*: the reader pads the part
outside the raster and marks it invalid. Keeping the grid regular (instead of shifting the last tile back
inside the raster) means every pair of neighbours overlaps by exactly ``O`` pixels, which the blending
windows in :mod:`engine.inference.stitching` rely on.

The segmentation pipeline runs this grid on the raster extended by :func:`grid_margins`: half the overlap beyond
every edge (:func:`edge_context_px`), so the raster's own edge pixels never sit at a tile's edge, where a model has
no context. An *anchored* grid starts where a lattice fixed in the CRS says (:func:`anchored_grid_start`: a tile
origin every ``S`` pixels from the CRS origin), so the same ground falls at the same place in a tile whatever the
raster's extent (two overlapping clips of one image give the same answer where they overlap).

The *core* of a tile is the part a centre-crop stitcher keeps: half the overlap is cut from each inner side
(none from a side on the raster border). Cores partition the raster: every pixel lies in exactly one core.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

from affine import Affine
from rasterio.windows import Window

from ..errors import InvalidInputError

TileGrid = Literal["raster", "anchored"]
#: ``raster``: tiles start at the raster's top-left pixel; ``anchored``: tiles on a lattice fixed in the CRS.
TILE_GRIDS: tuple[str, ...] = get_args(TileGrid)

__all__ = [
    "TILE_GRIDS",
    "TileGrid",
    "TilingSpec",
    "anchored_grid_start",
    "axis_offsets",
    "core_window",
    "edge_context_px",
    "grid_margins",
    "iter_tile_rows",
    "iter_tile_windows",
    "mirror_depth_px",
    "tile_count",
    "tile_grid_shape",
    "tiles_touching",
    "window_offsets",
]


@dataclass(frozen=True)
class TilingSpec:
    """How a raster is cut into tiles.

    Attributes:
        tile_size_px: Edge of the square tile fed to the model, in pixels.
        overlap_px: Pixels shared by neighbouring tiles, ``0 <= overlap_px < tile_size_px``.
    """

    tile_size_px: int
    overlap_px: int

    def __post_init__(self) -> None:
        """Reject sizes that cannot tile a raster; the message says which value to use instead."""
        if isinstance(self.tile_size_px, bool) or not isinstance(self.tile_size_px, int) or self.tile_size_px < 1:
            raise InvalidInputError(f"Tile size must be a positive whole number of pixels, got {self.tile_size_px!r}.")
        if isinstance(self.overlap_px, bool) or not isinstance(self.overlap_px, int) or self.overlap_px < 0:
            raise InvalidInputError(f"Overlap must be a whole number of pixels >= 0, got {self.overlap_px!r}.")
        if self.overlap_px >= self.tile_size_px:
            raise InvalidInputError(
                f"Overlap {self.overlap_px} px must be smaller than the tile size {self.tile_size_px} px; "
                f"use at most {self.tile_size_px // 2} px (a quarter of the tile is typical)."
            )

    @property
    def stride_px(self) -> int:
        """Distance between the origins of neighbouring tiles, ``tile_size_px - overlap_px``."""
        return self.tile_size_px - self.overlap_px

    @property
    def margin_start_px(self) -> int:
        """Pixels a centre crop discards at a tile's inner top/left side (half the overlap, rounded down)."""
        return self.overlap_px // 2

    @property
    def margin_end_px(self) -> int:
        """Pixels a centre crop discards at a tile's inner bottom/right side (the other half of the overlap)."""
        return self.overlap_px - self.overlap_px // 2


def axis_offsets(length_px: int, spec: TilingSpec) -> list[int]:
    """Tile origins along one axis of ``length_px`` pixels.

    Uses ``ceil`` rather than ``floor`` so the last, partial tile is kept: the tiles always reach the far edge.

    Raises:
        InvalidInputError: If ``length_px`` is not positive.
    """
    if length_px < 1:
        raise InvalidInputError(f"Cannot tile an axis of {length_px} pixels; the raster must not be empty.")
    return window_offsets(length_px, spec.tile_size_px, spec.stride_px)


def window_offsets(length_px: int, window_px: int, stride_px: int) -> list[int]:
    """Origins of ``window_px`` windows every ``stride_px`` pixels that reach the far edge of ``length_px``.

    ``ceil((length - window) / stride) + 1`` windows (at least one): the last one may extend past the edge. The
    engine's tile grid and training's patch extraction share this formula.
    """
    if length_px <= window_px:
        return [0]
    count = math.ceil((length_px - window_px) / stride_px) + 1
    return [i * stride_px for i in range(count)]


def anchored_grid_start(transform: Affine, spec: TilingSpec) -> tuple[int, int]:
    """Rows and columns by which an anchored tile grid starts before a raster's first row and column.

    The lattice has a tile origin every ``stride_px`` pixels counted from the CRS origin along the raster's own
    pixel axes, so rasters of the same imagery (same pixel size, pixels aligned) share their tile windows. Each
    value is in ``[0, stride_px)``. A rotated or sheared grid, or one without georeference (identity transform),
    starts at the raster itself: ``(0, 0)``.
    """
    if not _has_lattice(transform):
        return 0, 0
    # The raster's first pixel, counted in pixels from the CRS origin (rounded: geotransforms carry float noise).
    first_col = round(transform.c / transform.a)
    first_row = round(transform.f / transform.e)
    return first_row % spec.stride_px, first_col % spec.stride_px


def edge_context_px(spec: TilingSpec) -> int:
    """Pixels of context the tile grid reaches beyond the raster's edges: half the overlap.

    A model's answer at a tile's edge is made without context, so the raster's own edge pixels should not sit there;
    half the overlap is what a centre-crop stitcher discards at an inner tile side, and what a naive loop pads.
    """
    return spec.overlap_px // 2


#: How far beyond the raster a tile mirrors it: ``"grid"``, as far as the tile grid reaches (half the overlap), band
#: means further out; ``"unlimited"``, mirrored wherever a tile reaches. Unlimited since issue 18: on the v3 default
#: model (whose HBIS layers pool over the whole tile) the band-mean block in the last tiles made the engine change
#: 6.90 % of pixels for a 300 px shift against a naive reflect-padded loop's 5.89 %; mirrored, 5.79 %, at no cost in
#: held-out mIoU (tile 1: 0.4191 against 0.4184). It had cost the v2 model 1.9 points there (0.405 against 0.424),
#: which is why issue 13 chose ``"grid"``.
MIRROR_DEPTH = "unlimited"


def mirror_depth_px(spec: TilingSpec) -> int | None:
    """The mirroring depth of a run's reads (:data:`MIRROR_DEPTH`): pixels beyond the raster, None for no limit.

    The one place the policy is decided: a single-process run, every Dask worker and the in-memory loop of training
    validation read tiles the same way.
    """
    return edge_context_px(spec) if MIRROR_DEPTH == "grid" else None


def grid_margins(spec: TilingSpec, tile_grid: str, transform: Affine | None = None) -> tuple[int, int, int, int]:
    """How far the tile grid reaches beyond the raster: ``(top, left, bottom, right)`` pixels, read boundless.

    The grid starts before the first row and column and ends after the last ones by at least
    :func:`edge_context_px`; an ``"anchored"`` grid starts where the CRS lattice of :func:`anchored_grid_start`
    says (one stride earlier if that leaves less context). ``transform`` is the raster's (processing) grid; without
    it, or without georeference, an anchored grid falls back to the raster's own corner.
    """
    context = edge_context_px(spec)
    top = left = context
    if tile_grid == "anchored" and transform is not None and _has_lattice(transform):
        top, left = (p + spec.stride_px if p < context else p for p in anchored_grid_start(transform, spec))
    return top, left, context, context


def _has_lattice(transform: Affine) -> bool:
    """Whether a grid is georeferenced, north-up and unrotated, so its pixels lie on a CRS lattice."""
    return (
        transform != Affine.identity() and transform.b == 0 and transform.d == 0 and bool(transform.a and transform.e)
    )


def tile_grid_shape(height: int, width: int, spec: TilingSpec) -> tuple[int, int]:
    """Number of tile rows and tile columns covering a ``height`` x ``width`` raster."""
    return len(axis_offsets(height, spec)), len(axis_offsets(width, spec))


def tile_count(height: int, width: int, spec: TilingSpec) -> int:
    """Total number of tiles covering a ``height`` x ``width`` raster."""
    rows, cols = tile_grid_shape(height, width, spec)
    return rows * cols


def iter_tile_rows(height: int, width: int, spec: TilingSpec, region: Window | None = None) -> Iterator[list[Window]]:
    """Yield the tile windows one tile row at a time, top to bottom, each row left to right.

    Every window is ``tile_size_px`` square; windows may extend past the right/bottom edge (read boundless).

    Args:
        height: Raster rows.
        width: Raster columns.
        spec: The tiling.
        region: Yield only the tiles of the raster's global grid that overlap this window (a super-tile of a
            distributed run); the whole grid if None.
    """
    row_offsets = axis_offsets(height, spec)
    col_offsets = axis_offsets(width, spec)
    if region is not None:
        row_offsets = _touching(row_offsets, int(region.row_off), int(region.height), spec)
        col_offsets = _touching(col_offsets, int(region.col_off), int(region.width), spec)
    for row_off in row_offsets:
        yield [Window(col_off, row_off, spec.tile_size_px, spec.tile_size_px) for col_off in col_offsets]


def _touching(offsets: list[int], start: int, length: int, spec: TilingSpec) -> list[int]:
    """The tile origins whose ``[o, o + T)`` meets ``[start, start + length)``."""
    return [o for o in offsets if o < start + length and o + spec.tile_size_px > start]


def tiles_touching(height: int, width: int, spec: TilingSpec, region: Window) -> int:
    """Number of tiles of the global grid that overlap ``region`` (see :func:`iter_tile_rows`)."""
    rows = _touching(axis_offsets(height, spec), int(region.row_off), int(region.height), spec)
    cols = _touching(axis_offsets(width, spec), int(region.col_off), int(region.width), spec)
    return len(rows) * len(cols)


def iter_tile_windows(height: int, width: int, spec: TilingSpec) -> Iterator[Window]:
    """Yield every tile window in row-major order (see :func:`iter_tile_rows`)."""
    for row in iter_tile_rows(height, width, spec):
        yield from row


def _core_span(offset: int, length_px: int, spec: TilingSpec) -> tuple[int, int]:
    """The [start, stop) pixels one tile keeps along an axis under centre cropping, clipped to the raster."""
    is_first = offset == 0
    is_last = offset + spec.tile_size_px >= length_px
    start = offset if is_first else offset + spec.margin_start_px
    stop = length_px if is_last else offset + spec.tile_size_px - spec.margin_end_px
    return start, stop


def core_window(window: Window, height: int, width: int, spec: TilingSpec) -> Window:
    """The part of a tile kept by centre cropping, in raster pixel coordinates (inside the raster).

    Half the overlap is cut from every side shared with a neighbour; sides on the raster border keep
    everything up to the border. The cores of :func:`iter_tile_windows` partition the raster exactly.
    """
    row_start, row_stop = _core_span(int(window.row_off), height, spec)
    col_start, col_stop = _core_span(int(window.col_off), width, spec)
    return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)
