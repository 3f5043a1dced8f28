"""The segmentation pipeline: raster in, class raster (+ heatmaps, HBIS heatmaps, polygons) out, in bounded memory.

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
from ..backends.hbis import hbis_layer_count, resolve_hbis_layer
from ..errors import CanceledError, OutOfMemoryError
from ..model_card import ModelCard
from ..model_file import ModelFile
from ..progress import NullProgress, ProgressReporter, SubProgress
from ..raster.geotiff import ALL_CPUS
from ..raster.reader import RasterSource
from ..raster.write_behind import RowWriter, WriteBehind
from ..raster.writer import SegmentationWriter
from .request import SegmentationRequest, SegmentationResult, check_output_paths, clamp_tiling, resolve_tiling
from .stitching import StripAccumulator
from .tiling import TilingSpec, grid_margins, iter_tile_rows, mirror_depth_px, tile_count, tiles_touching
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
    "request_margins",
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
#: With a vector output: share of the progress bar given to tiles and to polygonizing.
_VECTOR_RUN_TILES_SHARE = 0.8
_VECTOR_SHARE = 0.19
#: How the HBIS heatmap values were made, recorded in their GeoTIFF's tags.
HBIS_VALUES_TAG = (
    "softmax over classes of the HBIS heatmap logits (pixel-feature / class-embedding similarity), upsampled "
    "bilinearly (align_corners=False) to the tile, blended like the class probabilities"
)


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
        tile_count: Tiles in the grid (overlapping the region, when one was given).
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
    extra_channels: int = 0,
    region: Window | None = None,
    margins_px: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> StitchStats:
    """Tile ``source``, run ``predict`` on batches of tiles, blend and stream finished rows to ``writer``.

    Args:
        source: Gives normalised (C, T, T) tiles and their (T, T) valid masks, boundless.
        writer: Receives ``(row_off, probs (K, rows, width), valid (rows, width))`` in row order, each row once
            (and ``extra=`` the (E, rows, width) extra channels when ``extra_channels`` > 0).
        predict: (B, C, T, T) -> (B, K + E, T, T): class probabilities, then E extra channels.
        spec: The tiling.
        num_classes: K.
        stitching: Name of the blending strategy.
        batch_size: Tiles per ``predict`` call.
        progress: Gets a monotonic fraction in [0, 0.98] and is asked about cancellation between batches.
        extra_channels: E, channels after the class probabilities (BiCoR-Seg's HBIS heatmaps) that are blended
            with the same weights in the same strip and handed to the writer beside them.
        region: Produce only this window of the raster (a super-tile of a distributed run): only the global
            grid's tiles that overlap it are read and run, blended with the global grid's weights, so its pixels
            get exactly the values of the whole-raster run. ``writer`` then receives the window's rows and
            columns, ``row_off`` counted from the window's top.
        margins_px: ``(top, left, bottom, right)`` pixels the tile grid reaches beyond the source (see
            :func:`~engine.inference.tiling.grid_margins`): the loop runs on the source extended by that much (read
            boundless: mirrored, invalid) and hands ``writer`` only the source's own rows and columns (or the
            region's, which stays in the source's pixel coordinates).

    Raises:
        CanceledError: If ``progress`` reports a cancel (the caller aborts the writer).
    """
    reporter = progress if progress is not None else NullProgress()
    if any(margins_px):
        # The grid runs on the extended source; the source itself (or the region of it) is the region produced.
        top, left = margins_px[:2]
        if region is None:
            region = Window(left, top, source.width, source.height)
        else:
            region = Window(region.col_off + left, region.row_off + top, region.width, region.height)
        source = _ExtendedSource(source, margins_px)
    height, width = source.height, source.width
    if region is None:
        stats = StitchStats(tile_count=tile_count(height, width, spec))
    else:
        stats = StitchStats(tile_count=tiles_touching(height, width, spec, region))
    accumulator = StripAccumulator(num_classes + extra_channels, height, width, spec, stitching, region=region)
    stats.strip_bytes = accumulator.nbytes
    first_row = 0 if region is None else int(region.row_off)

    def sink(row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        if extra_channels:
            writer.write_rows(row_off - first_row, probs[:num_classes], valid, extra=probs[num_classes:])
        else:
            writer.write_rows(row_off - first_row, probs, valid)
        stats.valid_pixel_count += int(np.count_nonzero(valid))

    tiles_seen = 0

    def run_batch(batch: list[tuple[Window, NDArray[np.float32], NDArray[np.bool_]]]) -> None:
        _check_canceled(reporter)
        probs = predict(np.stack([tile for _, tile, _ in batch]))
        for (window, _, valid), tile_probs in zip(batch, probs, strict=True):
            accumulator.add(window, tile_probs, valid)
        stats.tiles_run += len(batch)
        reporter.set_progress(_TILES_SHARE * tiles_seen / stats.tile_count)

    for row in iter_tile_rows(height, width, spec, region=region):
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


def open_request_raster(request: SegmentationRequest, card: ModelCard) -> RasterSource:
    """The request's input raster, opened for ``card`` with every reading option of the request.

    The one place a request becomes a :class:`~engine.raster.reader.RasterSource`: a single-process run, the
    client and the workers of a distributed run all read the raster the same way.
    """
    return RasterSource.open(
        Path(request.input_path),
        card,
        bands=request.bands,
        resample_to_model_gsd=request.resample_to_model_gsd,
        extent=request.extent,
        mask_geometries=request.mask_geometries,
        value_scaling=request.value_scaling,
    )


def request_margins(request: SegmentationRequest, spec: TilingSpec, source: RasterSource) -> tuple[int, int, int, int]:
    """How far the request's tile grid reaches beyond the raster (:func:`~engine.inference.tiling.grid_margins`).

    The one place a run's grid is placed: a single-process run and every worker of a distributed run use it, so
    their tiles coincide.
    """
    transform = source.processing_transform if source.georeferenced else None
    return grid_margins(spec, request.tile_grid, transform)


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
        InvalidRasterError: If the raster is missing, unreadable or contains no valid pixel, or resampling to the
            model's resolution would multiply its pixel count by more than 16.
        ModelLoadError: If the model returns NaN or infinite values, or an output of the wrong shape.
        OutputPathError: If an output cannot be written.
        CanceledError: If ``progress`` reported a cancel; nothing is left at the output paths.
        OutOfMemoryError: If memory ran out (the message says to lower BATCH_SIZE or TILE_SIZE).
    """
    try:
        return _segment_raster(request, progress, backend, model)
    except OutOfMemoryError:
        raise
    except MemoryError as exc:  # numpy or a runtime ran out: one line with the fix, never a traceback
        raise OutOfMemoryError() from exc


def _segment_raster(
    request: SegmentationRequest,
    progress: ProgressReporter | None,
    backend: InferenceBackend | None,
    model: ModelFile | None,
) -> SegmentationResult:
    started = time.perf_counter()
    reporter = progress if progress is not None else NullProgress()
    check_output_paths(request)
    if model is None:
        model = ModelFile.open(request.model_path)
    card = model.card
    fixed_size = model.input_size_px if model.kind == "onnx" else None
    spec = resolve_tiling(request, card, fixed_size)
    # The model is checked before the raster is opened, so a request it cannot serve (an HBIS layer it lacks)
    # fails before any work or message.
    if backend is None:
        backend = load_backend(model, backend=request.backend, device=request.device, num_threads=request.num_threads)
    hbis_layer = None
    hbis_tags: dict[str, str] = {}
    if request.hbis_heatmaps_path is not None:
        hbis_layer = resolve_hbis_layer(request.hbis_layer, backend, card)
        count = hbis_layer_count(backend)
        hbis_tags = {"hbis_layer": str(hbis_layer), "hbis_layer_count": str(count), "hbis_values": HBIS_VALUES_TAG}
    with open_request_raster(request, card) as source:
        if not source.resolution_warned:  # a warning was already logged on opening: say it once
            logger.info("%s", source.resolution_line)
        if source.scaling_line:
            logger.info("%s", source.scaling_line)
        if fixed_size is not None:
            if request.tile_size_px is None:
                logger.info(
                    "Model '%s' takes a fixed %d px square input: tiles of that size.", card.name, spec.tile_size_px
                )
        else:
            spec, note = clamp_tiling(
                spec, source.height, source.width, card.size_divisor_px, request.tile_size_px is not None
            )  # fmt: skip
            if note:
                logger.info("%s", note)
        source.mirror_depth_px = mirror_depth_px(spec)  # for the final grid
        if hbis_layer is not None:
            logger.info(
                "HBIS heatmaps of layer %d (layers 0 to %d).", hbis_layer, int(hbis_tags["hbis_layer_count"]) - 1
            )
        # Messages go through logging only: each front end shows them once (CLI: stderr, QGIS: the algorithm log).
        logger.info("Model '%s' runs with %s on %s: %s", card.name, backend.name, backend.device, backend.device_reason)
        batch_size = request.batch_size or int(getattr(card, "batch_size", 0) or 0)
        batch_size = batch_size or auto_batch_size(backend.device, spec.tile_size_px)
        model_sha256 = model.sha256
        tags = provenance_tags(request, card, model_sha256, spec, batch_size, backend)
        margins = request_margins(request, spec, source)
        vector = request.vector
        tiles_progress: ProgressReporter = reporter
        if vector is not None:
            tiles_progress = SubProgress(reporter, 0.0, _VECTOR_RUN_TILES_SHARE / _TILES_SHARE)
        with SegmentationWriter(
            source, Path(request.output_path), request.heatmaps_path, card, tags, cog=request.cog,
            hbis_path=request.hbis_heatmaps_path, hbis_tags=hbis_tags, vector=vector,
            heatmap_dtype=request.heatmap_dtype, compression_threads=ALL_CPUS,
        ) as writer:  # fmt: skip
            # The writer counts the classes it writes on the input grid: the one place pixels are counted.
            with WriteBehind(writer) as rows_out:
                stats = stitch_raster(
                    source,
                    rows_out,
                    make_predictor(backend, card.num_classes, request.tta, hbis_layer=hbis_layer),
                    spec,
                    card.num_classes,
                    stitching=request.stitching,
                    batch_size=batch_size,
                    progress=tiles_progress,
                    extra_channels=0 if hbis_layer is None else card.num_classes,
                    margins_px=margins,
                )
            # fails with "contains no valid pixels" when no input pixel got a class
            writer.commit(progress=SubProgress(reporter, _VECTOR_RUN_TILES_SHARE, _VECTOR_SHARE))
        if writer.vector_stats is not None:
            sieve = writer.vector_stats.sieve_threshold_px
            merged = f" (regions under {sieve} px merged into their largest neighbour)" if sieve else ""
            logger.info(
                "Wrote %d class polygons to '%s'%s.", writer.vector_stats.feature_count, request.vector_path, merged
            )
    counts = np.asarray(writer.class_pixel_counts, dtype=np.int64)
    reporter.set_progress(1.0)
    elapsed = time.perf_counter() - started
    logger.debug("Segmented %d of %d tiles in %.1f s", stats.tiles_run, stats.tile_count, elapsed)
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
        hbis_heatmaps_path=None if request.hbis_heatmaps_path is None else Path(request.hbis_heatmaps_path),
        hbis_layer=hbis_layer,
        vector_path=None if request.vector_path is None else Path(request.vector_path),
        vector_feature_count=0 if writer.vector_stats is None else writer.vector_stats.feature_count,
    )
