"""Outputs: the class GeoTIFF, the per-class heatmaps, the HBIS heatmaps and the class polygons, written atomically.

Rows arrive in order on the processing grid. They are staged into whole 256-row block rows so every compressed
block is written exactly once, into temp files beside the outputs. :meth:`SegmentationWriter.commit` resamples
back to the input grid when the processing grid differs, by one rule: the class *probabilities* are resampled
(:mod:`engine.raster.grid_resampling`: bilinear, or an area average where the processing grid is finer than the
input) and the class raster is their argmax on the input grid, so every class is a maximum of the heatmaps
written beside it (BiCoR-Seg's HBIS heatmaps are resampled the same way). It then fails if no input pixel
got a class, optionally converts to COG, polygonizes the finished class raster when a vector output is asked for
(:mod:`engine.raster.vectorize`), and only then moves the files into place with ``os.replace``. Anything
else (:meth:`~SegmentationWriter.abort`, an exception, a cancel) leaves nothing at the output paths.
"""

from __future__ import annotations

import logging
import os
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
from rasterio.windows import Window

from ..errors import InvalidRasterError, OutputPathError
from ..model_card import NODATA_CLASS, ModelCard
from ..progress import ProgressReporter
from .argmax import argmax_classes
from .geotiff import ALL_CPUS, BLOCK_SIZE_PX, GridFiles, OutputGrid
from .grid_resampling import GridResampler, axis_maps
from .heatmaps import HEATMAP_NODATA, HeatmapEncoding, heatmap_encoding, quantize_probabilities, round_probabilities
from .output_paths import check_output_paths
from .temp_files import new_run_token, remove_stale_temporaries, temp_path
from .vectorize import VectorOutput, VectorStats, vector_sidecars, write_class_polygons
from .write_checks import verify_geotiff, verify_sidecar, write_failure

__all__ = ["SegmentationWriter", "WriterSource"]


class WriterSource(Protocol):
    """What the writer needs of the open input (a :class:`~engine.raster.reader.RasterSource` provides it).

    The writer receives rows on the processing grid and writes the outputs on the input grid; where the two
    differ it resamples back and cuts the result to the input's own validity with :meth:`read_input_valid`.
    Without ``has_geotransform`` the outputs get no geotransform either, so they lie on the input's pixel grid.
    """

    path: Path
    input_height: int
    input_width: int
    height: int
    width: int
    transform: Affine
    has_geotransform: bool
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

    def check_unchanged(self) -> None:
        """Raise if the input's files changed since they were opened (checked before the outputs are committed)."""
        ...


logger = logging.getLogger(__name__)

#: Columns resampled at once when going back to the input grid (bounds memory on very wide rasters).
_RESAMPLE_CHUNK_PX = 4096


class SegmentationWriter:
    """Writes the class raster (and heatmaps) for one run; a context manager that aborts on exceptions.

    Attributes:
        output_path: Where the class raster goes on :meth:`commit`.
        heatmaps_path: Where the heatmaps go on :meth:`commit`, or None for no heatmaps.
        hbis_path: Where the HBIS heatmaps go on :meth:`commit`, or None.
        vector: The class polygons to write on :meth:`commit`, or None.
        class_pixel_counts: Pixels per class on the input grid; final after :meth:`commit`.
        valid_pixel_count: Valid (classified) pixels on the input grid; final after :meth:`commit`.
        vector_stats: What the vector step wrote; set by :meth:`commit` when ``vector`` is given.
    """

    def __init__(
        self,
        source: WriterSource,
        output_path: Path,
        heatmaps_path: Path | None,
        card: ModelCard,
        tags: Mapping[str, str],
        cog: bool = False,
        hbis_path: Path | None = None,
        hbis_tags: Mapping[str, str] | None = None,
        vector: VectorOutput | None = None,
        require_valid_pixels: bool = True,
        heatmap_dtype: str = "uint16",
        compression_threads: int | str = ALL_CPUS,
    ) -> None:
        """Check the output paths and create the temp files.

        Args:
            source: The open input; its processing grid receives :meth:`write_rows`, its input grid the outputs.
            output_path: Class raster destination (GeoTIFF).
            heatmaps_path: Heatmaps destination (GeoTIFF), or None.
            card: Model card (class names and colours).
            tags: Provenance tags written into every raster output.
            cog: Write Cloud-Optimised GeoTIFFs.
            hbis_path: HBIS heatmaps destination (GeoTIFF), or None; :meth:`write_rows` then needs ``extra``.
            hbis_tags: Further tags of the HBIS heatmaps (layer, normalisation).
            vector: Class polygons to derive from the finished class raster, or None.
            require_valid_pixels: Fail the commit when no input pixel got a class (False for the parts of a
                distributed run, where a super-tile may lie entirely in nodata).
            heatmap_dtype: Heatmap storage, ``"uint16"`` (steps of 1e-4) or ``"uint8"`` (steps of 0.004).
            compression_threads: GDAL compression threads: a count, or ``"ALL_CPUS"`` (when the CPU cores are not
                busy running the model).

        Raises:
            OutputPathError: If an output path cannot be written; raised before any work is done.
        """
        self.output_path = Path(output_path)
        self.heatmaps_path = None if heatmaps_path is None else Path(heatmaps_path)
        self.hbis_path = None if hbis_path is None else Path(hbis_path)
        self.vector = vector
        self._require_valid_pixels = require_valid_pixels
        self.vector_stats: VectorStats | None = None
        self._hbis_tags = {str(k): str(v) for k, v in (hbis_tags or {}).items()}
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
        rasters = [self.output_path] + [p for p in (self.heatmaps_path, self.hbis_path) if p is not None]
        vectors = [] if vector is None else [Path(vector.path)]
        check_output_paths(rasters, source.path, vector_outputs=vectors)
        for folder in dict.fromkeys(path.resolve().parent for path in rasters + vectors):
            remove_stale_temporaries(folder)  # what runs killed with SIGKILL left behind
        token = new_run_token()
        self._token = token
        self._temps: list[Path] = []
        transform = source.transform if source.has_geotransform else None
        input_grid = OutputGrid(source.input_height, source.input_width, transform, source.crs)
        try:
            final_heatmaps = None if self.heatmaps_path is None else self._temp_path(self.heatmaps_path, token, "final")
            self._final = self._open_grid(input_grid, token, "final", card, final_heatmaps, self._encoding)
            self._processing: GridFiles | None = None
            if source.resampled:
                # The probabilities go back to the input grid (the classes are their argmax there), so the
                # processing grid keeps them even when no heatmaps are asked for.
                grid = OutputGrid(source.height, source.width, source.processing_transform, source.crs)
                probabilities = self._temp_path(self.output_path, token, "grid-probabilities")
                # Always UInt16 there (rounded, see round_probabilities): the chosen encoding applies on commit.
                self._processing = self._open_grid(grid, token, "grid", card, probabilities, heatmap_encoding())
        except BaseException:
            self.abort()
            raise

    def _open_grid(
        self,
        grid: OutputGrid,
        token: str,
        kind: str,
        card: ModelCard,
        heatmaps: Path | None,
        encoding: HeatmapEncoding,
    ) -> GridFiles:
        classes = self._temp_path(self.output_path, token, kind)
        hbis = None if self.hbis_path is None else self._temp_path(self.hbis_path, token, kind)
        shown = {classes: self.output_path}
        if heatmaps is not None:
            shown[heatmaps] = self.heatmaps_path or self.output_path
        if hbis is not None and self.hbis_path is not None:
            shown[hbis] = self.hbis_path
        try:
            return GridFiles.create(
                grid,
                classes,
                heatmaps,
                card,
                self._tags,
                hbis,
                self._hbis_tags,
                shown,
                encoding,
                self._compression_threads,
            )
        except (OSError, rasterio.errors.RasterioError) as exc:
            failed = self.heatmaps_path if heatmaps is not None and heatmaps.exists() and self.heatmaps_path else None
            raise write_failure(failed or self.output_path, exc) from exc

    def _temp_path(self, final: Path, token: str, kind: str) -> Path:
        path = temp_path(final, token, kind)
        self._temps.extend([path, path.with_name(path.name + ".aux.xml")])
        return path

    # --- writing -------------------------------------------------------------------------------------------

    def write_rows(
        self,
        row_off: int,
        probs: NDArray[np.float32],
        valid: NDArray[np.bool_],
        extra: NDArray[np.float32] | None = None,
    ) -> None:
        """Write finished rows of class probabilities (and of HBIS heatmaps).

        Args:
            row_off: First row on the processing grid; rows must arrive in order without gaps.
            probs: (K, rows, source.width) class probabilities.
            valid: (rows, source.width) mask; False rows/pixels are written as nodata.
            extra: (K, rows, source.width) HBIS heatmap probabilities; required when ``hbis_path`` is set.

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
        target = self._processing or self._final
        heat = None
        if self._processing is not None:  # resampled and re-quantised exactly on commit
            heat = round_probabilities(probs, valid)
        elif target.heatmaps_path is not None:
            heat = quantize_probabilities(probs, valid, self._encoding)
        hbis = None
        if self.hbis_path is not None:
            if extra is None or extra.shape != probs.shape:
                raise ValueError(f"HBIS heatmaps are written: write_rows needs extra of shape {probs.shape}.")
            if self._processing is not None:
                hbis = round_probabilities(extra, valid)
            else:
                hbis = quantize_probabilities(extra, valid, self._encoding)
        try:
            target.write(row_off, classes, heat, hbis)
        except OutputPathError:
            raise
        except (OSError, rasterio.errors.RasterioError) as exc:
            raise write_failure(self.output_path, exc) from exc
        self._next_row = row_off + rows

    def write_encoded_rows(self, row_off: int, classes: NDArray[np.uint8], heatmaps: NDArray[np.uint16] | None) -> None:
        """Write finished rows that another writer already encoded (the parts of a distributed run).

        The values are taken as they are: ``classes`` as written by :meth:`write_rows` (class index, or
        :data:`~engine.model_card.NODATA_CLASS`), ``heatmaps`` as quantised by it; so the assembled outputs hold
        exactly the bytes a single writer would have written.

        Args:
            row_off: First row on the processing grid; rows must arrive in order without gaps.
            classes: (rows, source.width) uint8.
            heatmaps: (K, rows, source.width) uint16, required when this writer writes heatmaps.

        Raises:
            ValueError: If rows arrive out of order or the shapes do not match the grid (a caller bug).
            OutputPathError: If writing fails (disk full).
        """
        if self._finished:
            raise ValueError("write_encoded_rows() after commit() or abort(); create a new SegmentationWriter.")
        rows, width = classes.shape
        if row_off != self._next_row or width != self._source.width or row_off + rows > self._source.height:
            raise ValueError(
                f"write_encoded_rows(row_off={row_off}, classes {classes.shape}) does not continue the grid: "
                f"expected row {self._next_row} and width {self._source.width}."
            )
        if self.heatmaps_path is not None and (
            heatmaps is None or heatmaps.shape != (self._card.num_classes, rows, width)
        ):
            raise ValueError(f"heatmaps must be ({self._card.num_classes}, {rows}, {width}) uint16.")
        if self._processing is not None:  # the processing grid keeps probabilities, which parts do not carry
            raise ValueError("write_encoded_rows() needs the outputs on the processing grid (no resampling back).")
        try:
            self._final.write(row_off, classes, heatmaps if self.heatmaps_path else None)
        except OutputPathError:
            raise
        except (OSError, rasterio.errors.RasterioError) as exc:
            raise write_failure(self.output_path, exc) from exc
        self._next_row = row_off + rows

    def commit(self, progress: ProgressReporter | None = None) -> None:
        """Finish the outputs and move them into place.

        Args:
            progress: Progress (fractions 0..1) and cancellation of the vector step, if there is one.

        Raises:
            ValueError: If not every row was written.
            OutputPathError: If a file could not be written completely (full disk, OS error) or moved into place
                (e.g. open in another program); nothing is left at the output paths.
            InvalidRasterError: If the input changed during the run (nothing is committed).
            CanceledError: If ``progress`` reports a cancel during the vector step (nothing is moved into place).
        """
        if self._finished:
            raise ValueError("commit() called twice or after abort().")
        # GDAL reports what goes wrong while closing only to its error handler: inside an Env that is rasterio's,
        # which logs it (the checks after each close turn it into one error), instead of GDAL printing to stderr.
        with rasterio.Env():
            self._commit(progress)

    def _commit(self, progress: ProgressReporter | None) -> None:
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
            except OutputPathError:
                raise
            except (OSError, rasterio.errors.RasterioError) as exc:
                raise write_failure(self.output_path, exc) from exc
            self.class_pixel_counts = self._final.class_pixel_counts
            self.valid_pixel_count = sum(self.class_pixel_counts)
            if self.valid_pixel_count == 0 and self._require_valid_pixels:  # on the input grid, after resampling
                raise InvalidRasterError(
                    f"Input raster '{self._source.path}' contains no valid pixels (all nodata, masked or outside the "
                    "extent); check its nodata value, bands, EXTENT and MASK."
                )
            self._final.write_category_names(self._card)
            finals = self._finalise_files()
            # An input overwritten during the run gave rows of two images: commit nothing rather than a mix.
            self._source.check_unchanged()
            if self.vector is not None:
                finals.append(self._write_vector(finals, progress))
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
        """Resample the processing grid's probabilities onto the input grid; the classes are their argmax there.

        Bilinear along an axis where the input grid is finer than the processing grid, area average where it is
        coarser (:mod:`engine.raster.grid_resampling`: the two grids share their bounds). A valid input pixel
        that no resampled value reaches takes the nearest processing pixel's probabilities. Memory: one chunk
        of at most 256 x 4096 input pixels (fewer columns when the processing grid is finer) at a time.
        """
        source, final = self._source, self._final
        if grid.heatmaps_path is None:
            raise ValueError("the processing grid holds no probabilities to resample")
        maps = axis_maps(source.processing_transform, source.transform)
        resampler = GridResampler(
            (source.height, source.width), (source.input_height, source.input_width), HEATMAP_NODATA, maps
        )
        denser = max(1.0, (source.height * source.width) / (source.input_height * source.input_width))
        chunk_px = max(BLOCK_SIZE_PX, int(_RESAMPLE_CHUNK_PX / denser))
        hbis_source = None if grid.hbis_path is None else rasterio.open(grid.hbis_path)
        try:
            with rasterio.open(grid.heatmaps_path) as probabilities:

                def read(window: Window) -> NDArray[np.float32]:
                    return np.asarray(probabilities.read(window=window), dtype=np.float32)

                def read_hbis(window: Window) -> NDArray[np.float32]:
                    if hbis_source is None:  # only called when HBIS heatmaps are written
                        raise ValueError("no HBIS heatmaps on the processing grid")
                    return np.asarray(hbis_source.read(window=window), dtype=np.float32)

                for row_off in range(0, source.input_height, BLOCK_SIZE_PX):
                    rows = min(BLOCK_SIZE_PX, source.input_height - row_off)
                    classes = np.empty((rows, source.input_width), dtype=np.uint8)
                    heat = hbis = None
                    if final.heatmaps_path is not None:
                        heat = np.empty((self._card.num_classes, *classes.shape), dtype=self._encoding.numpy_dtype)
                    if hbis_source is not None:
                        hbis = np.empty((self._card.num_classes, *classes.shape), dtype=self._encoding.numpy_dtype)
                    for col_off in range(0, source.input_width, chunk_px):
                        cols = min(chunk_px, source.input_width - col_off)
                        window = Window(col_off, row_off, cols, rows)
                        values, present = resampler.resample(read, window)
                        # Cut to the input grid's own nodata / mask / extent exactly (when the input is open).
                        valid = present.copy() if source.closed else source.read_input_valid(window)
                        fill = valid & ~present
                        if fill.any():
                            fallback, has_data = resampler.nearest(read, window)
                            fill &= has_data
                            values[:, fill] = fallback[:, fill]
                            present |= fill
                        valid &= present
                        chunk = np.argmax(values, axis=0).astype(np.uint8)
                        chunk[~valid] = NODATA_CLASS
                        classes[:, col_off : col_off + cols] = chunk
                        if heat is not None:
                            # Quantising renormalises each pixel and keeps the order of its values, so the class
                            # (the argmax above) stays a maximum of the stored heatmaps.
                            heat[:, :, col_off : col_off + cols] = quantize_probabilities(
                                values, valid, self._encoding, keep_order=True
                            )
                        if hbis is not None:
                            layer, _ = resampler.resample(read_hbis, window)
                            if fill.any():
                                layer[:, fill] = resampler.nearest(read_hbis, window)[0][:, fill]
                            hbis[:, :, col_off : col_off + cols] = quantize_probabilities(layer, valid, self._encoding)
                    final.write(row_off, classes, heat, hbis)
        finally:
            if hbis_source is not None:
                hbis_source.close()

    def _finalise_files(self) -> list[tuple[Path, Path]]:
        """(temp, destination) pairs to move, after the optional COG conversion; every file checked complete."""
        pairs = [(self._final.classes_path, self.output_path)]
        if self.heatmaps_path is not None and self._final.heatmaps_path is not None:
            pairs.append((self._final.heatmaps_path, self.heatmaps_path))
        if self.hbis_path is not None and self._final.hbis_path is not None:
            pairs.append((self._final.hbis_path, self.hbis_path))
        if self._cog:
            pairs = [
                (_to_cog(temp, dest, is_classes=dest == self.output_path, temps=self._temps), dest)
                for temp, dest in pairs
            ]
        moves: list[tuple[Path, Path]] = []
        for temp, dest in pairs:
            aux = temp.with_name(temp.name + ".aux.xml")
            dest_aux = dest.with_name(dest.name + ".aux.xml")
            verify_sidecar(aux, dest_aux)
            if aux.exists():
                moves.append((aux, dest_aux))
            elif dest_aux.exists():
                dest_aux.unlink()  # it described the file about to be replaced (stale statistics, categories)
            moves.append((temp, dest))
        return moves

    def _write_vector(self, finals: list[tuple[Path, Path]], progress: ProgressReporter | None) -> tuple[Path, Path]:
        """Polygonize the finished class raster (still at its temp path) into a temp vector file beside the output."""
        vector = self.vector
        if vector is None:
            raise ValueError("no vector output was asked for")
        class_temp = next(temp for temp, dest in finals if dest == self.output_path)
        destination = Path(vector.path)
        temp = destination.with_name(f".{destination.stem}.{self._token}.tmp{destination.suffix}")
        self._temps.extend([temp, *vector_sidecars(temp)])
        self.vector_stats = write_class_polygons(
            class_temp, temp, vector, self._card, destination.parent, self._token, progress, self._temps
        )
        return temp, destination

    def _remove_temps(self) -> None:
        for path in self._temps:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # leave the temp rather than mask the real outcome
                logger.debug("Could not delete temp file %s: %s", path, exc)


def _to_cog(path: Path, dest: Path, is_classes: bool, temps: list[Path]) -> Path:
    """Copy a tiled GeoTIFF to a Cloud-Optimised GeoTIFF beside it (with overviews); return the COG's path."""
    cog = path.with_name(path.name.replace(".tmp.tif", ".cog.tmp.tif"))
    temps.extend([cog, cog.with_name(cog.name + ".aux.xml")])
    try:
        rasterio.shutil.copy(
            path, cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK_SIZE_PX, BIGTIFF="IF_SAFER",
            PREDICTOR="NO" if is_classes else "YES", NUM_THREADS="ALL_CPUS",
            OVERVIEW_RESAMPLING="NEAREST" if is_classes else "AVERAGE",
        )  # fmt: skip
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise write_failure(dest, exc) from exc
    verify_geotiff(cog, dest)
    aux = path.with_name(path.name + ".aux.xml")
    if aux.exists():  # category names live in the PAM sidecar: carry them over
        os.replace(aux, cog.with_name(cog.name + ".aux.xml"))
    return cog


def _move_into_place(moves: list[tuple[Path, Path]]) -> None:
    done: list[Path] = []
    for temp, dest in moves:
        try:
            os.replace(temp, dest)
        except OSError as exc:
            for path in done:  # all or nothing: no half-written set of outputs
                path.unlink(missing_ok=True)
            raise OutputPathError(
                f"Cannot write '{dest}' ({exc.strerror or type(exc).__name__}); close it in any program that has it "
                "open, or choose another path."
            ) from exc
        done.append(dest)
