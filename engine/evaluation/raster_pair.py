"""A prediction and a reference class raster on one grid, read block by block into a confusion matrix.

Memory stays bounded whatever the raster size: blocks of at most :data:`BLOCK_ROWS` x :data:`BLOCK_COLS` pixels
are read through rasterio windows, and the matrix of the whole raster is the sum of the blocks' matrices.

Which pixels are scored: the prediction's value must be a class index 0..254 that is not its nodata value (255 is
the class raster's nodata, :data:`engine.model_card.NODATA_CLASS`, whether or not the file says so); the
reference's value must not be its nodata value nor ``ignore_index``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ..errors import CanceledError, InvalidRasterError
from ..model_card import NODATA_CLASS
from ..progress import NullProgress, ProgressReporter
from .metrics import confusion_matrix

__all__ = ["BLOCK_COLS", "BLOCK_ROWS", "MATRIX_CLASSES", "accumulate_confusion", "used_class_count"]

#: Rows of one block (the block row of the engine's own GeoTIFFs).
BLOCK_ROWS = 256
#: Columns of one block: 256 x 16384 pixels = 4 Mpx, a few tens of MB of int64 work arrays.
BLOCK_COLS = 16384
#: Side of the accumulated matrix: every value a UInt8 class raster can hold (0..255).
MATRIX_CLASSES = NODATA_CLASS + 1
#: Largest pixel misalignment (in pixels) still treated as the same grid (rounding in stored transforms).
_GRID_TOLERANCE_PX = 1e-3


def accumulate_confusion(
    prediction: Path,
    reference: Path,
    ignore_index: int | None = None,
    progress: ProgressReporter | None = None,
) -> NDArray[np.int64]:
    """Confusion counts of the reference (rows) against the prediction (columns) over all scored pixels.

    Args:
        prediction: Class raster to score (band 1).
        reference: Reference class raster on the same grid (band 1).
        ignore_index: Reference value that is not scored (e.g. 0 for "no label"); None = score every value.
        progress: Receives the finished fraction after each block and is asked about cancellation before it.

    Returns:
        (256, 256) int64 matrix; entry ``[t, p]`` counts pixels of reference value t predicted as p.

    Raises:
        InvalidRasterError: If a raster is missing or unreadable, or the two are not on the same grid.
        CanceledError: If ``progress`` reports a cancellation.
    """
    reporter = progress if progress is not None else NullProgress()
    with _open(prediction, "Prediction") as pred_src, _open(reference, "Reference") as ref_src:
        _check_same_grid(pred_src, ref_src)
        matrix = np.zeros((MATRIX_CLASSES, MATRIX_CLASSES), dtype=np.int64)
        total = pred_src.height * pred_src.width
        done = 0
        for window in _block_windows(pred_src.height, pred_src.width):
            if reporter.is_canceled():
                raise CanceledError("Evaluation canceled; no report was written.")
            pred = pred_src.read(1, window=window).astype(np.int64)
            target = ref_src.read(1, window=window).astype(np.int64)
            valid = _scored(pred, target, pred_src.nodata, ref_src.nodata)
            matrix += confusion_matrix(np.where(valid, pred, 0), target, MATRIX_CLASSES, ignore_index, valid)
            done += int(window.height) * int(window.width)
            reporter.set_progress(done / total)
    return matrix


def used_class_count(matrix: NDArray[np.int64]) -> int:
    """1 + the largest class index that occurs in the reference or the prediction (0 if none)."""
    used = np.flatnonzero(matrix.sum(axis=0) + matrix.sum(axis=1))
    return int(used.max()) + 1 if used.size else 0


def _open(path: Path, role: str) -> DatasetReader:
    path = Path(path)
    if not str(path).startswith("/vsi") and not path.exists():
        raise InvalidRasterError(f"{role} raster '{path}' does not exist; check the path.")
    try:
        return rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise InvalidRasterError(
            f"Cannot open the {role.lower()} raster '{path}' ({exc}); give a complete GeoTIFF, VRT or other "
            "GDAL raster."
        ) from exc


def _check_same_grid(pred_src: DatasetReader, ref_src: DatasetReader) -> None:
    """Same size always; same CRS and pixel grid too when both rasters are georeferenced."""
    if (pred_src.height, pred_src.width) != (ref_src.height, ref_src.width):
        raise InvalidRasterError(
            f"Prediction is {pred_src.width} x {pred_src.height} pixels but the reference is "
            f"{ref_src.width} x {ref_src.height}; warp the reference onto the prediction's grid first "
            "(e.g. gdal:warpreproject with nearest neighbour)."
        )
    if pred_src.crs is None or ref_src.crs is None:
        return  # e.g. a label PNG: only the pixel grid can be compared
    if pred_src.crs != ref_src.crs:
        raise InvalidRasterError(
            f"Prediction is in {pred_src.crs.to_string()} but the reference is in {ref_src.crs.to_string()}; warp "
            "the reference onto the prediction's grid first (e.g. gdal:warpreproject with nearest neighbour)."
        )
    # The reference's pixel coordinates of the prediction's pixel corners: the identity on the same grid.
    offset = ~ref_src.transform * pred_src.transform
    if not offset.almost_equals(offset.identity(), precision=_GRID_TOLERANCE_PX):
        column, row = offset.c, offset.f
        raise InvalidRasterError(
            f"Prediction and reference have the same size but not the same pixel grid (the prediction starts at "
            f"reference pixel column {column:.3f}, row {row:.3f}); warp the reference onto the prediction's grid "
            "first (e.g. gdal:warpreproject with nearest neighbour)."
        )


def _block_windows(height: int, width: int) -> Iterator[Window]:
    for row in range(0, height, BLOCK_ROWS):
        for col in range(0, width, BLOCK_COLS):
            yield Window(col, row, min(BLOCK_COLS, width - col), min(BLOCK_ROWS, height - row))


def _scored(
    pred: NDArray[np.int64], target: NDArray[np.int64], pred_nodata: float | None, ref_nodata: float | None
) -> NDArray[np.bool_]:
    """Pixels with a class-index prediction (not nodata) and a reference value that is not nodata."""
    valid: NDArray[np.bool_] = (pred >= 0) & (pred < NODATA_CLASS)
    if pred_nodata is not None and not math.isnan(pred_nodata):
        valid &= pred != int(pred_nodata)
    if ref_nodata is not None and not math.isnan(ref_nodata):
        valid &= target != int(ref_nodata)
    return valid
