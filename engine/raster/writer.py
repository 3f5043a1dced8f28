"""Output rasters: the class GeoTIFF and the per-class heatmaps, written atomically on the input grid.

Rows arrive in order on the processing grid. They are staged into whole 256-row block rows so every compressed
block is written exactly once, into temp files beside the outputs. :meth:`SegmentationWriter.commit` resamples
back to the input grid when the processing grid differs (nearest for classes; bilinear, renormalised and
re-quantised for heatmaps), optionally converts to COG, and only then moves the files into place with
``os.replace``. Anything else (:meth:`~SegmentationWriter.abort`, an exception) leaves nothing at the output paths.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import OutputPathError
from ..model_card import NODATA_CLASS, ModelCard
from .geotiff import ALL_CPUS, BLOCK_SIZE_PX, GridFiles, OutputGrid
from .heatmaps import heatmap_encoding, quantize_probabilities, requantize_heatmaps
from .output_paths import check_output_paths

__all__ = ["SegmentationWriter", "WriterSource", "argmax_classes"]


class WriterSource(Protocol):
    """What the writer needs of the open input (a :class:`~engine.raster.reader.RasterSource` provides it).

    The writer receives rows on the processing grid and writes the outputs on the input grid; where the two
    differ it resamples back and cuts the result to the input's own validity with :meth:`read_input_valid`.
    """

    path: Path
    input_height: int
    input_width: int
    height: int
    width: int
    transform: Affine
    processing_transform: Affine
    crs: CRS | None
    resampled: bool

    @property
    def closed(self) -> bool:
        """Whether the input is closed (then the resampled classes are not cut to its validity)."""
        ...

    def read_input_valid(self, window: Window) -> NDArray[np.bool_]:
        """Validity of a window of the input grid (nodata, masks, EXTENT, MASK), boundless."""
        ...


logger = logging.getLogger(__name__)

#: Columns resampled at once when going back to the input grid (bounds memory on very wide rasters).
_RESAMPLE_CHUNK_PX = 4096


class SegmentationWriter:
    """Writes the class raster (and heatmaps) for one run; a context manager that aborts on exceptions.

    Attributes:
        output_path: Where the class raster goes on :meth:`commit`.
        heatmaps_path: Where the heatmaps go on :meth:`commit`, or None for no heatmaps.
        class_pixel_counts: Pixels per class on the input grid; final after :meth:`commit`.
        valid_pixel_count: Valid (classified) pixels on the input grid; final after :meth:`commit`.
    """

    def __init__(
        self,
        source: WriterSource,
        output_path: Path,
        heatmaps_path: Path | None,
        card: ModelCard,
        tags: Mapping[str, str],
        cog: bool = False,
        heatmap_dtype: str = "uint16",
        compression_threads: int | str = ALL_CPUS,
    ) -> None:
        """Check the output paths and create the temp files.

        Args:
            source: The open input; its processing grid receives :meth:`write_rows`, its input grid the outputs.
            output_path: Class raster destination (GeoTIFF).
            heatmaps_path: Heatmaps destination (GeoTIFF), or None.
            card: Model card (class names and colours).
            tags: Provenance tags written into both outputs.
            cog: Write Cloud-Optimised GeoTIFFs.
            heatmap_dtype: Heatmap storage, ``"uint16"`` (steps of 1e-4) or ``"uint8"`` (steps of 0.004).
            compression_threads: GDAL compression threads: a count, or ``"ALL_CPUS"`` (when the CPU cores are not
                busy running the model).

        Raises:
            OutputPathError: If an output path cannot be written; raised before any work is done.
        """
        self.output_path = Path(output_path)
        self.heatmaps_path = None if heatmaps_path is None else Path(heatmaps_path)
        self.class_pixel_counts: tuple[int, ...] = (0,) * card.num_classes
        self.valid_pixel_count = 0
        self._source = source
        self._card = card
        self._tags = {str(k): str(v) for k, v in tags.items()}
        self._cog = cog
        self._encoding = heatmap_encoding(heatmap_dtype)
        self._compression_threads = compression_threads
        self._finished = False
        self._next_row = 0
        self._nonfinite_pixels = 0
        check_output_paths([self.output_path] + ([self.heatmaps_path] if self.heatmaps_path else []), source.path)
        token = uuid.uuid4().hex[:12]
        self._temps: list[Path] = []
        input_grid = OutputGrid(source.input_height, source.input_width, source.transform, source.crs)
        try:
            self._final = self._open_grid(input_grid, token, "final", card)
            self._processing: GridFiles | None = None
            if source.resampled:
                grid = OutputGrid(source.height, source.width, source.processing_transform, source.crs)
                self._processing = self._open_grid(grid, token, "grid", card)
        except BaseException:
            self.abort()
            raise

    def _open_grid(self, grid: OutputGrid, token: str, kind: str, card: ModelCard) -> GridFiles:
        classes = self._temp_path(self.output_path, token, kind)
        heatmaps = None if self.heatmaps_path is None else self._temp_path(self.heatmaps_path, token, kind)
        try:
            return GridFiles.create(
                grid, classes, heatmaps, card, self._tags, self._encoding, self._compression_threads
            )
        except (OSError, rasterio.errors.RasterioError) as exc:
            raise OutputPathError(
                f"Cannot write '{self.output_path}': creating a file in '{classes.parent}' failed ({exc}); choose a "
                "writable folder with enough free space."
            ) from exc

    def _temp_path(self, final: Path, token: str, kind: str) -> Path:
        path = final.with_name(f".{final.stem}.{token}.{kind}.tmp.tif")
        self._temps.extend([path, path.with_name(path.name + ".aux.xml")])
        return path

    # --- writing -------------------------------------------------------------------------------------------

    def write_rows(self, row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        """Write finished rows of class probabilities.

        Args:
            row_off: First row on the processing grid; rows must arrive in order without gaps.
            probs: (K, rows, source.width) class probabilities.
            valid: (rows, source.width) mask; False rows/pixels are written as nodata.

        Raises:
            ValueError: If rows arrive out of order or the shapes do not match the grid (a caller bug).
        """
        if self._finished:
            raise ValueError("write_rows() after commit() or abort(); create a new SegmentationWriter.")
        k, rows, width = probs.shape
        if row_off != self._next_row or width != self._source.width or k != self._card.num_classes:
            raise ValueError(
                f"write_rows(row_off={row_off}, probs {probs.shape}) does not continue the grid: expected row "
                f"{self._next_row} and shape ({self._card.num_classes}, rows, {self._source.width})."
            )
        if valid.shape != (rows, width) or row_off + rows > self._source.height:
            raise ValueError(f"valid {valid.shape} must be ({rows}, {width}) within {self._source.height} rows.")
        if not np.isfinite(probs.sum()):  # finite total: every value is (an overflow only sends us the long way)
            finite = np.isfinite(probs).all(axis=0)
            valid = valid & finite
            self._nonfinite_pixels += int((~finite).sum())
        classes = argmax_classes(probs)
        if not valid.all():
            classes[~valid] = NODATA_CLASS
        heat = None if self.heatmaps_path is None else quantize_probabilities(probs, valid, self._encoding)
        try:
            (self._processing or self._final).write(row_off, classes, heat)
        except (OSError, rasterio.errors.RasterioError) as exc:
            raise _write_error(self.output_path, exc) from exc
        self._next_row = row_off + rows

    def commit(self) -> None:
        """Finish the outputs and move them into place.

        Raises:
            ValueError: If not every row was written.
            OutputPathError: If a file cannot be moved into place (e.g. open in another program).
        """
        if self._finished:
            raise ValueError("commit() called twice or after abort().")
        try:
            if self._next_row != self._source.height:
                raise ValueError(f"commit() after {self._next_row} of {self._source.height} rows; write every row.")
            if self._nonfinite_pixels:
                logger.warning(
                    "%d pixels had non-finite probabilities and were written as nodata.", self._nonfinite_pixels
                )
            try:
                if self._processing is not None:
                    self._processing.close()
                    self._resample_back(self._processing)
                self._final.close()
            except (OSError, rasterio.errors.RasterioError) as exc:
                raise _write_error(self.output_path, exc) from exc
            self.class_pixel_counts = self._final.class_pixel_counts
            self.valid_pixel_count = sum(self.class_pixel_counts)
            self._final.write_category_names(self._card)
            finals = self._finalise_files()
            _move_into_place(finals)
        except BaseException:
            self.abort()
            raise
        self._finished = True
        self._remove_temps()

    def abort(self) -> None:
        """Delete every temp file; nothing is left at the output paths. Safe to call more than once."""
        self._finished = True
        for files in (getattr(self, "_final", None), getattr(self, "_processing", None)):
            if files is not None:
                files.close(discard=True)
        self._remove_temps()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._finished:
            if exc_type is None:
                logger.warning("SegmentationWriter closed without commit(): outputs discarded.")
            self.abort()

    # --- finishing -----------------------------------------------------------------------------------------

    def _resample_back(self, grid: GridFiles) -> None:
        """Resample the processing-grid results onto the input grid, block row by block row."""
        source, final = self._source, self._final
        warp = {"crs": source.crs, "transform": source.transform, "height": source.input_height}
        with (
            rasterio.open(grid.classes_path) as classes_src,
            WarpedVRT(classes_src, width=source.input_width, resampling=Resampling.nearest, **warp) as classes_vrt,
        ):
            heat_src = None if grid.heatmaps_path is None else rasterio.open(grid.heatmaps_path)
            try:
                heat_vrt = None
                if heat_src is not None:
                    nodata = self._encoding.nodata
                    heat_vrt = WarpedVRT(
                        heat_src, width=source.input_width, resampling=Resampling.bilinear, dtype="float32",
                        src_nodata=nodata, nodata=nodata, **warp,
                    )  # fmt: skip
                for row_off in range(0, source.input_height, BLOCK_SIZE_PX):
                    rows = min(BLOCK_SIZE_PX, source.input_height - row_off)
                    classes = np.empty((rows, source.input_width), dtype=np.uint8)
                    heat = None
                    if heat_vrt is not None:
                        heat = np.empty((self._card.num_classes, *classes.shape), self._encoding.numpy_dtype)
                    for col_off in range(0, source.input_width, _RESAMPLE_CHUNK_PX):
                        cols = min(_RESAMPLE_CHUNK_PX, source.input_width - col_off)
                        window = Window(col_off, row_off, cols, rows)
                        chunk = classes_vrt.read(1, window=window)
                        if not source.closed:  # cut to the input grid's own nodata / mask / extent exactly
                            chunk[~source.read_input_valid(window)] = NODATA_CLASS
                        classes[:, col_off : col_off + cols] = chunk
                        if heat is not None and heat_vrt is not None:
                            warped = heat_vrt.read(window=window)
                            heat[:, :, col_off : col_off + cols] = requantize_heatmaps(warped, chunk, self._encoding)
                    final.write(row_off, classes, heat)
                if heat_vrt is not None:
                    heat_vrt.close()
            finally:
                if heat_src is not None:
                    heat_src.close()

    def _finalise_files(self) -> list[tuple[Path, Path]]:
        """(temp, destination) pairs to move, after the optional COG conversion."""
        pairs = [(self._final.classes_path, self.output_path)]
        if self.heatmaps_path is not None and self._final.heatmaps_path is not None:
            pairs.append((self._final.heatmaps_path, self.heatmaps_path))
        if self._cog:
            pairs = [
                (_to_cog(temp, is_classes=dest == self.output_path, temps=self._temps), dest) for temp, dest in pairs
            ]
        moves: list[tuple[Path, Path]] = []
        for temp, dest in pairs:
            aux = temp.with_name(temp.name + ".aux.xml")
            dest_aux = dest.with_name(dest.name + ".aux.xml")
            if aux.exists():
                moves.append((aux, dest_aux))
            elif dest_aux.exists():
                dest_aux.unlink()  # it described the file about to be replaced (stale statistics, categories)
            moves.append((temp, dest))
        return moves

    def _remove_temps(self) -> None:
        for path in self._temps:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # leave the temp rather than mask the real outcome
                logger.debug("Could not delete temp file %s: %s", path, exc)


#: Pixels per arg-max step: a chunk's class rows stay in the CPU cache.
_ARGMAX_CHUNK_PX = 1 << 14


def argmax_classes(probs: NDArray[np.float32]) -> NDArray[np.uint8]:
    """``argmax`` over the first axis of (K, ...) finite probabilities, as uint8; ties go to the lower class.

    The same classes as ``np.argmax(probs, axis=0)`` for finite values (pixels holding NaN get some class; the
    writer marks them nodata). Computed as the per-pixel maximum, then the lowest class equal to it, a class row at
    a time over cache-sized chunks with vectorised whole-row operations: about a tenth of the time of numpy's
    strided reduction across the class axis, for the K of land cover.
    """
    k = probs.shape[0]
    flat = probs.reshape(k, -1)
    n = flat.shape[1]
    classes = np.empty(n, dtype=np.uint8)
    if k == 1:
        classes.fill(0)
        return classes.reshape(probs.shape[1:])
    size = min(n, _ARGMAX_CHUNK_PX)
    best = np.empty(size, dtype=probs.dtype)
    other = np.empty(size, dtype=bool)
    candidate = np.empty(size, dtype=np.uint8)
    for start in range(0, n, _ARGMAX_CHUNK_PX):
        stop = min(start + _ARGMAX_CHUNK_PX, n)
        m = stop - start
        top, differs, index, out = best[:m], other[:m], candidate[:m], classes[start:stop]
        np.maximum(flat[0, start:stop], flat[1, start:stop], out=top)
        for j in range(2, k):
            np.maximum(top, flat[j, start:stop], out=top)
        out.fill(k - 1)
        for j in range(k - 2, -1, -1):  # keep the lowest class that reaches the maximum
            np.not_equal(flat[j, start:stop], top, out=differs)
            np.multiply(differs, np.uint8(255), out=index)  # 255 where class j is below the maximum, else 0
            np.bitwise_or(index, np.uint8(j), out=index)  # j where class j reaches it
            np.minimum(out, index, out=out)
    return classes.reshape(probs.shape[1:])


def _to_cog(path: Path, is_classes: bool, temps: list[Path]) -> Path:
    """Copy a tiled GeoTIFF to a Cloud-Optimised GeoTIFF beside it (with overviews); return the COG's path."""
    cog = path.with_name(path.name.replace(".tmp.tif", ".cog.tmp.tif"))
    temps.extend([cog, cog.with_name(cog.name + ".aux.xml")])
    rasterio.shutil.copy(
        path, cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK_SIZE_PX, BIGTIFF="IF_SAFER",
        PREDICTOR="NO" if is_classes else "YES", NUM_THREADS="ALL_CPUS",
        OVERVIEW_RESAMPLING="NEAREST" if is_classes else "AVERAGE",
    )  # fmt: skip
    aux = path.with_name(path.name + ".aux.xml")
    if aux.exists():  # category names live in the PAM sidecar: carry them over
        os.replace(aux, cog.with_name(cog.name + ".aux.xml"))
    return cog


def _write_error(output_path: Path, exc: BaseException) -> OutputPathError:
    return OutputPathError(
        f"Writing the outputs beside '{output_path}' failed ({exc}); is the disk full? Free space or choose another "
        "folder."
    )


def _move_into_place(moves: list[tuple[Path, Path]]) -> None:
    done: list[Path] = []
    for temp, dest in moves:
        try:
            os.replace(temp, dest)
        except OSError as exc:
            for path in done:  # all or nothing: no half-written set of outputs
                path.unlink(missing_ok=True)
            raise OutputPathError(
                f"Cannot write '{dest}' ({exc}); close it in any program that has it open, or choose another path."
            ) from exc
        done.append(dest)
