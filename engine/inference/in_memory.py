"""An in-memory image as a tile source and an array as the row sink, for the one tile loop.

Training validation and evaluation predict whole images held in memory; they run through
:func:`~engine.inference.pipeline.stitch_raster` exactly as a raster file does (same grid and windows, same boundless
padding: the image mirrored beyond its edges as far as :func:`engine.inference.tiling.mirror_depth_px` says; same
blending), so a validation score measures what a QGIS user gets.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from ..raster import reader
from .pipeline import DEFAULT_BATCH_SIZE, stitch_raster
from .tiling import TilingSpec, grid_margins, mirror_depth_px
from .tta import Predictor

__all__ = ["ArraySink", "ArrayTileSource", "stitch_array"]


class ArrayTileSource:
    """A normalised (C, H, W) image served as boundless tiles (mirrored and invalid outside the image)."""

    def __init__(
        self, image: NDArray[np.float32], valid: NDArray[np.bool_] | None = None, mirror_depth_px: int | None = None
    ) -> None:
        self.mirror_depth_px = mirror_depth_px
        self._image = np.asarray(image, dtype=np.float32)
        self._valid = np.ones(self._image.shape[1:], dtype=bool) if valid is None else np.asarray(valid, dtype=bool)

    @property
    def height(self) -> int:
        """Rows of the image."""
        return int(self._image.shape[1])

    @property
    def width(self) -> int:
        """Columns of the image."""
        return int(self._image.shape[2])

    def read_tile(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """The (C, h, w) tile of ``window`` and its (h, w) validity; outside the image mirrored and invalid."""
        row_off, col_off = int(window.row_off), int(window.col_off)
        rows = np.arange(row_off, row_off + int(window.height))
        cols = np.arange(col_off, col_off + int(window.width))
        inside = ((rows >= 0) & (rows < self.height))[:, None] & ((cols >= 0) & (cols < self.width))[None, :]
        if reader.EDGE_PADDING == "reflect":
            take = np.ix_(
                reader.mirror_indices(row_off, rows.size, self.height),
                reader.mirror_indices(col_off, cols.size, self.width),
            )
        else:
            take = np.ix_(np.clip(rows, 0, self.height - 1), np.clip(cols, 0, self.width - 1))
        tile = self._image[:, take[0], take[1]]
        valid = self._valid[take] & inside
        if reader.EDGE_PADDING != "reflect":
            tile[:, ~inside] = 0.0  # the band mean
        elif self.mirror_depth_px is not None:
            height, width, depth = self.height, self.width, self.mirror_depth_px
            tile[:, reader.beyond_mirror_depth(row_off, rows.size, height, col_off, cols.size, width, depth)] = 0.0
        return tile, valid


class ArraySink:
    """Collects the finished rows of the tile loop into one (K, H, W) probability array (zeros where invalid)."""

    def __init__(self, num_classes: int, height: int, width: int) -> None:
        self.probabilities = np.zeros((num_classes, height, width), dtype=np.float32)

    def write_rows(
        self,
        row_off: int,
        probs: NDArray[np.float32],
        valid: NDArray[np.bool_],
        extra: NDArray[np.float32] | None = None,
    ) -> None:
        """Store rows ``row_off..`` of the blended probabilities (``extra`` channels are not kept)."""
        self.probabilities[:, row_off : row_off + probs.shape[1]] = probs


def stitch_array(
    image: NDArray[np.float32],
    predict: Predictor,
    spec: TilingSpec,
    num_classes: int,
    stitching: str = "gaussian",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> NDArray[np.float32]:
    """Class probabilities (K, H, W) of a whole normalised (C, H, W) image through the engine's tile loop."""
    source = ArrayTileSource(image, mirror_depth_px=mirror_depth_px(spec))
    sink = ArraySink(num_classes, source.height, source.width)
    margins = grid_margins(spec, "raster")  # the same grid as a raster file gets
    stitch_raster(
        source, sink, predict, spec, num_classes, stitching=stitching, batch_size=batch_size, margins_px=margins
    )
    return sink.probabilities
