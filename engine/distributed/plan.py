"""Super-tiles: the work units of a distributed run, block-aligned windows of the processing grid.

A super-tile is a window whose edges lie on multiples of the output's block size
(:data:`~engine.raster.geotiff.BLOCK_SIZE_PX`), so each worker's part holds whole output blocks and the parts
assemble without re-cutting a block. A worker runs every tile of the *global* tile grid that overlaps its window
(:func:`~engine.inference.tiling.iter_tile_rows` with ``region``): that reads a halo of up to one tile beyond the
window, at least the overlap, and blends with the global grid's weights, so every pixel gets exactly the value of
the whole-raster run. The price is that tiles straddling a super-tile border are computed by each neighbour:
:func:`redundant_tile_share` says how many.

Nothing here imports Dask.
"""

from __future__ import annotations

from dataclasses import dataclass

from rasterio.windows import Window

from ..errors import InvalidInputError
from ..inference.tiling import TilingSpec, tile_count, tiles_touching
from ..raster.geotiff import BLOCK_SIZE_PX

__all__ = ["DEFAULT_SUPER_TILE_PX", "SuperTile", "plan_super_tiles", "redundant_tile_share"]

#: Edge of a super-tile when none is asked for: 8192 px (9.8 % of the tiles computed twice at T = 512, O = 64 on
#: a 65,536² mosaic; :func:`redundant_tile_share`).
DEFAULT_SUPER_TILE_PX = 8192


@dataclass(frozen=True)
class SuperTile:
    """One work unit: a block-aligned window of the processing grid.

    Attributes:
        index: Position in the plan (row-major).
        grid_row: Row of the super-tile in the plan's grid.
        grid_col: Column of the super-tile in the plan's grid.
        row_off_px: First row of the window on the processing grid (a multiple of the block size).
        col_off_px: First column of the window (a multiple of the block size).
        height_px: Rows of the window (the super-tile size, less at the raster's bottom edge).
        width_px: Columns of the window (the super-tile size, less at the raster's right edge).
    """

    index: int
    grid_row: int
    grid_col: int
    row_off_px: int
    col_off_px: int
    height_px: int
    width_px: int

    @property
    def window(self) -> Window:
        """The window on the processing grid."""
        return Window(self.col_off_px, self.row_off_px, self.width_px, self.height_px)


def check_super_tile_size(super_tile_px: int) -> int:
    """The super-tile edge if it is a positive multiple of the block size.

    Raises:
        InvalidInputError: Naming the nearest valid size otherwise.
    """
    if isinstance(super_tile_px, bool) or not isinstance(super_tile_px, int) or super_tile_px < BLOCK_SIZE_PX:
        raise InvalidInputError(
            f"Super-tile size must be a whole number of at least {BLOCK_SIZE_PX} px, got {super_tile_px!r}; use "
            f"{DEFAULT_SUPER_TILE_PX} (the default) or another multiple of {BLOCK_SIZE_PX}."
        )
    if super_tile_px % BLOCK_SIZE_PX:
        nearest = max(BLOCK_SIZE_PX, round(super_tile_px / BLOCK_SIZE_PX) * BLOCK_SIZE_PX)
        raise InvalidInputError(
            f"Super-tile size {super_tile_px} px is not a multiple of the output block size {BLOCK_SIZE_PX} px; "
            f"use {nearest} px."
        )
    return super_tile_px


def plan_super_tiles(height: int, width: int, super_tile_px: int = DEFAULT_SUPER_TILE_PX) -> list[SuperTile]:
    """Cut a ``height`` x ``width`` processing grid into block-aligned super-tiles, row-major.

    Raises:
        InvalidInputError: If ``super_tile_px`` is not a positive multiple of the block size.
    """
    size = check_super_tile_size(super_tile_px)
    tiles: list[SuperTile] = []
    for grid_row, row_off in enumerate(range(0, height, size)):
        for grid_col, col_off in enumerate(range(0, width, size)):
            tiles.append(
                SuperTile(
                    index=len(tiles),
                    grid_row=grid_row,
                    grid_col=grid_col,
                    row_off_px=row_off,
                    col_off_px=col_off,
                    height_px=min(size, height - row_off),
                    width_px=min(size, width - col_off),
                )
            )
    return tiles


def redundant_tile_share(height: int, width: int, spec: TilingSpec, plan: list[SuperTile]) -> float:
    """Share of the global grid's tiles computed more than once: (tiles run by all super-tiles - grid) / grid."""
    total = tile_count(height, width, spec)
    run = sum(tiles_touching(height, width, spec, tile.window) for tile in plan)
    return (run - total) / total
