"""The segmentation pipeline: raster in, class raster (+ heatmaps) out, in bounded memory.

One loop serves the QGIS plugin, the command line and the benchmarks:

1. read the model card, open the raster on the processing grid, load the backend (and say which and why);
2. walk the tile grid one tile row at a time, reading tiles boundless and batching the ones with any valid
   pixel (tiles that are all nodata / masked / outside the extent never reach the model);
3. blend each tile's class probabilities into a :class:`~engine.inference.stitching.StripAccumulator` that spans one
   tile row (``K x tile x width`` float32);
4. after each tile row, hand the rows no later tile can touch to
   :meth:`~engine.raster.writer.SegmentationWriter.write_rows` (through a write-behind thread, so compression
   overlaps the next model calls) and reuse the strip.

So peak memory grows with tile size x raster width, never with the raster's area: no full-size array exists.
The writer writes to temporary files and moves them into place only on commit, so a failure, a cancel or
Ctrl-C leaves nothing at the output paths.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from .. import __version__
from ..backends import InferenceBackend, load_backend
from ..errors import CanceledError, InvalidRasterError
from ..model_card import ModelCard
from ..model_file import ModelFile
from ..progress import NullProgress, ProgressReporter
from ..raster.geotiff import ALL_CPUS
from ..raster.reader import RasterSource
from ..raster.write_behind import RowWriter, WriteBehind
from ..raster.writer import SegmentationWriter
from .request import SegmentationRequest, SegmentationResult, check_output_paths, resolve_tiling
from .stitching import StripAccumulator
from .tiling import TilingSpec, edge_context_px, grid_margins, iter_tile_rows, tile_count
from .tta import TTA_MODES, Predictor, make_predictor

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "GPU_BATCH_TILE_PIXELS",
    "TTA_MODES",
    "WRITE_CHUNK_ROWS",
    "SegmentationRequest",
    "SegmentationResult",
    "StitchStats",
    "auto_batch_size",
    "check_output_paths",
    "make_predictor",
    "provenance_tags",
    "resolve_tiling",
    "segment_raster",
    "stitch_raster",
]

logger = logging.getLogger(__name__)

#: Tiles per model call of the in-memory and low-level loops when the caller says nothing (a GPU-friendly size).
DEFAULT_BATCH_SIZE = 4
#: The GPU batch budget, in tile pixels per model call (8 tiles of 512 px); the batch is this over the tile area.
GPU_BATCH_TILE_PIXELS = 8 * 512 * 512
#: Largest automatic batch.
MAX_AUTO_BATCH_SIZE = 32
#: Rows per write_rows call: the writer's temporaries (argmax, quantisation) scale with rows x width.
WRITE_CHUNK_ROWS = 16
#: Share of the progress bar given to tiles; the rest is finalising the outputs.
_TILES_SHARE = 0.98


class TileSource(Protocol):
    """The part of :class:`~engine.raster.reader.RasterSource` the tile loop uses."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def read_tile(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]: ...


@dataclass
class StitchStats:
    """Counts gathered while stitching, on the processing grid.

    Attributes:
        tile_count: Tiles in the grid.
        tiles_run: Tiles that went through the model (the others were entirely invalid).
        valid_pixel_count: Pixels with a class.
        strip_bytes: Memory held by the stitching strip.
    """

    tile_count: int
    tiles_run: int = 0
    valid_pixel_count: int = 0
    strip_bytes: int = 0


def stitch_raster(
    source: TileSource,
    writer: RowWriter,
    predict: Predictor,
    spec: TilingSpec,
    num_classes: int,
    stitching: str = "gaussian",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressReporter | None = None,
    margins_px: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> StitchStats:
    """Tile ``source``, run ``predict`` on batches of tiles, blend and stream finished rows to ``writer``.

    Args:
        source: Gives normalised (C, T, T) tiles and their (T, T) valid masks, boundless.
        writer: Receives ``(row_off, probs (K, rows, width), valid (rows, width))`` in row order, each row once.
        predict: (B, C, T, T) -> (B, K, T, T) class probabilities.
        spec: The tiling.
        num_classes: K.
        stitching: Name of the blending strategy.
        batch_size: Tiles per ``predict`` call.
        progress: Gets a monotonic fraction in [0, 0.98] and is asked about cancellation between batches.
        margins_px: ``(top, left, bottom, right)`` pixels the tile grid reaches beyond the source (see
            :func:`~engine.inference.tiling.grid_margins`): the loop runs on the source extended by that much (read
            boundless: mirrored, invalid) and hands ``writer`` only the source's own rows and columns.

    Raises:
        CanceledError: If ``progress`` reports a cancel (the caller aborts the writer).
    """
    reporter = progress if progress is not None else NullProgress()
    if any(margins_px):
        writer = _CroppingWriter(writer, margins_px, source.height, source.width)
        source = _ExtendedSource(source, margins_px)
    height, width = source.height, source.width
    stats = StitchStats(tile_count=tile_count(height, width, spec))
    accumulator = StripAccumulator(num_classes, height, width, spec, stitching)
    stats.strip_bytes = accumulator.nbytes

    def sink(row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        writer.write_rows(row_off, probs, valid)
        stats.valid_pixel_count += int(np.count_nonzero(valid))

    tiles_seen = 0

    def run_batch(batch: list[tuple[Window, NDArray[np.float32], NDArray[np.bool_]]]) -> None:
        _check_canceled(reporter)
        probs = predict(np.stack([tile for _, tile, _ in batch]))
        for (window, _, valid), tile_probs in zip(batch, probs, strict=True):
            accumulator.add(window, tile_probs, valid)
        stats.tiles_run += len(batch)
        reporter.set_progress(_TILES_SHARE * tiles_seen / stats.tile_count)

    for row in iter_tile_rows(height, width, spec):
        pending: list[tuple[Window, NDArray[np.float32], NDArray[np.bool_]]] = []
        for window in row:
            tile, valid = source.read_tile(window)
            tiles_seen += 1
            if not valid.any():
                continue  # nothing to classify: never costs a model call
            pending.append((window, tile, valid))
            if len(pending) == batch_size:
                run_batch(pending)
                pending = []
        if pending:
            run_batch(pending)
        accumulator.finish_tile_row(sink, max_rows=WRITE_CHUNK_ROWS)
        _check_canceled(reporter)
        reporter.set_progress(_TILES_SHARE * tiles_seen / stats.tile_count)
    return stats


class _ExtendedSource:
    """A tile source extended by ``(top, left, bottom, right)`` rows and columns around it (boundless reads)."""

    def __init__(self, source: TileSource, margins_px: tuple[int, int, int, int]) -> None:
        self._source = source
        self._top, self._left, self._bottom, self._right = margins_px

    @property
    def height(self) -> int:
        return self._top + self._source.height + self._bottom

    @property
    def width(self) -> int:
        return self._left + self._source.width + self._right

    def read_tile(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        shifted = Window(window.col_off - self._left, window.row_off - self._top, window.width, window.height)
        return self._source.read_tile(shifted)


class _CroppingWriter:
    """Hands a writer only the rows and columns of the source inside an :class:`_ExtendedSource`."""

    def __init__(self, writer: RowWriter, margins_px: tuple[int, int, int, int], height: int, width: int) -> None:
        """Wrap ``writer`` of a ``height`` x ``width`` source extended by ``margins_px`` (top, left, bottom, right)."""
        self._writer = writer
        self._top, self._left = margins_px[:2]
        self._height, self._width = height, width

    def write_rows(self, row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        first = max(row_off, self._top)  # extended-grid rows of the source in this chunk: [first, last)
        last = min(row_off + probs.shape[1], self._top + self._height)
        if last <= first:
            return
        rows = slice(first - row_off, last - row_off)
        cols = slice(self._left, self._left + self._width)
        self._writer.write_rows(first - self._top, probs[:, rows, cols], valid[rows, cols])


def auto_batch_size(device: str, tile_size_px: int) -> int:
    """Tiles per model call when neither the request nor the card sets it: one on a CPU, a memory budget on a GPU.

    On a CPU the backends already spread one tile over every core, so batching brings no speed, while the memory
    held for activations grows with the batch (ONNX Runtime kept 360 MB more at batch 4 than at batch 1 for a
    0.6 M-parameter U-Net on 512 px tiles). On a GPU, batches fill the device: :data:`GPU_BATCH_TILE_PIXELS` of
    tile pixels per call (8 tiles of 512 px, 32 of 256 px), at most :data:`MAX_AUTO_BATCH_SIZE`.
    """
    if device != "cuda":
        return 1
    return max(1, min(MAX_AUTO_BATCH_SIZE, GPU_BATCH_TILE_PIXELS // (tile_size_px * tile_size_px)))


def _check_canceled(progress: ProgressReporter) -> None:
    if progress.is_canceled():
        raise CanceledError("Segmentation canceled by the user; no output was written.")


def provenance_tags(
    request: SegmentationRequest,
    card: ModelCard,
    model_sha256: str,
    spec: TilingSpec,
    batch_size: int,
    backend: InferenceBackend,
) -> dict[str, str]:
    """GeoTIFF metadata recording how an output was made, so it can be reproduced."""
    return {
        "model_name": card.name,
        "model_architecture": card.architecture,
        "model_version": card.version,
        "model_sha256": model_sha256,
        "engine_version": __version__,
        "tile_size_px": str(spec.tile_size_px),
        "overlap_px": str(spec.overlap_px),
        "batch_size": str(batch_size),
        "backend": backend.name,
        "device": backend.device,
        "stitching": request.stitching,
        "tta": request.tta,
        "tile_grid": request.tile_grid,
        "heatmap_dtype": request.heatmap_dtype,
    }


def _say(progress: ProgressReporter, message: str, level: int = logging.INFO) -> None:
    logger.log(level, message)
    progress.log(message)


def segment_raster(
    request: SegmentationRequest,
    progress: ProgressReporter | None = None,
    backend: InferenceBackend | None = None,
    model: ModelFile | None = None,
) -> SegmentationResult:
    """Segment one raster into a class raster (and optional heatmaps) with a model carrying a card.

    Args:
        request: What to segment, with which model and options.
        progress: Progress, messages and cancellation; silent if None.
        backend: An already loaded backend (tests, benchmarks); loaded from the model file if None.
        model: The model file, already opened by the caller (the plugin opens it to plan the run); opened from
            ``request.model_path`` if None. Either way the file is read once per run.

    Returns:
        What was written and how.

    Raises:
        InvalidInputError: For unusable options (tile size, bands, paths; subclasses name the problem).
        InvalidRasterError: If the raster is missing, unreadable or contains no valid pixel.
        OutputPathError: If an output cannot be written.
        CanceledError: If ``progress`` reported a cancel; nothing is left at the output paths.
    """
    started = time.perf_counter()
    reporter = progress if progress is not None else NullProgress()
    check_output_paths(request)
    if model is None:
        model = ModelFile.open(request.model_path)
    card = model.card
    spec = resolve_tiling(request, card)
    with RasterSource.open(
        Path(request.input_path),
        card,
        bands=request.bands,
        resample_to_model_gsd=request.resample_to_model_gsd,
        extent=request.extent,
        mask_geometries=request.mask_geometries,
        mirror_depth_px=edge_context_px(spec),
    ) as source:
        if not source.georeferenced:
            _say(reporter, f"'{request.input_path}' has no georeference; segmenting its pixel grid.", logging.WARNING)
        if backend is None:
            backend = load_backend(
                model, backend=request.backend, device=request.device, num_threads=request.num_threads
            )
        _say(reporter, f"Model '{card.name}' runs with {backend.name} on {backend.device}: {backend.device_reason}")
        batch_size = request.batch_size or int(getattr(card, "batch_size", 0) or 0)
        batch_size = batch_size or auto_batch_size(backend.device, spec.tile_size_px)
        model_sha256 = model.sha256
        tags = provenance_tags(request, card, model_sha256, spec, batch_size, backend)
        margins = grid_margins(spec, request.tile_grid, source.processing_transform if source.georeferenced else None)
        # GDAL compresses in worker threads on every device: keeping it to the write-behind thread on a CPU run
        # (so as not to compete with the model's threads) made runs slower, not faster (docs/engine.md).
        with SegmentationWriter(
            source, Path(request.output_path), request.heatmaps_path, card, tags, cog=request.cog,
            heatmap_dtype=request.heatmap_dtype, compression_threads=ALL_CPUS,
        ) as writer:  # fmt: skip
            # The writer counts the classes it writes on the input grid: the one place pixels are counted.
            with WriteBehind(writer) as rows_out:
                stats = stitch_raster(
                    source,
                    rows_out,
                    make_predictor(backend, card.num_classes, request.tta),
                    spec,
                    card.num_classes,
                    stitching=request.stitching,
                    batch_size=batch_size,
                    progress=reporter,
                    margins_px=margins,
                )
            if stats.valid_pixel_count == 0:
                raise InvalidRasterError(
                    f"Input raster '{request.input_path}' contains no valid pixels (all nodata, masked or outside "
                    "the extent); check its nodata value, bands, EXTENT and MASK."
                )
            writer.commit()
    counts = np.asarray(writer.class_pixel_counts, dtype=np.int64)
    reporter.set_progress(1.0)
    elapsed = time.perf_counter() - started
    logger.info("Segmented %d of %d tiles in %.1f s", stats.tiles_run, stats.tile_count, elapsed)
    return SegmentationResult(
        output_path=Path(request.output_path),
        heatmaps_path=None if request.heatmaps_path is None else Path(request.heatmaps_path),
        card=card,
        model_sha256=model_sha256,
        backend=backend.name,
        device=backend.device,
        device_reason=backend.device_reason,
        class_pixel_counts=tuple(int(c) for c in counts),
        valid_pixel_count=int(counts.sum()),
        tile_count=stats.tile_count,
        elapsed_s=elapsed,
    )
