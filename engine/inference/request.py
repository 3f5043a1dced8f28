"""What a segmentation run is asked to do and what it reports back, and the checks made before any work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.contract import BackendOption, DeviceOption
from ..backends.hbis import LAST_HBIS_LAYER
from ..errors import InvalidInputError, ModelLoadError
from ..model_card import ModelCard
from ..raster.heatmaps import HEATMAP_DTYPES, HeatmapDtype
from ..raster.output_paths import check_output_paths as check_raster_outputs
from ..raster.value_scaling import ValueScaling, check_value_scaling
from ..raster.vectorize import VectorOutput, check_vector_output
from .stitching import STITCHING_STRATEGIES, stitching_names
from .tiling import TILE_GRIDS, TileGrid, TilingSpec
from .tta import TTA_MODES, TtaMode

__all__ = [
    "TTA_MODES",
    "SegmentationRequest",
    "SegmentationResult",
    "check_output_paths",
    "clamp_tiling",
    "resolve_tiling",
]


@dataclass(frozen=True)
class SegmentationRequest:
    """Everything one segmentation run needs; ``None`` means "take it from the model card".

    Attributes:
        input_path: Raster to segment (any GDAL-readable file or VRT).
        output_path: Class raster to write (GeoTIFF).
        heatmaps_path: Per-class probability raster to write, or None for none.
        model_path: ``.onnx`` or torch checkpoint carrying a model card; None = the embedded default model.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        backend: ``"auto"``, ``"onnxruntime"`` or ``"torch"``.
        bands: 1-based input band indexes in the model's band order; None = from the card.
        tile_size_px: Tile edge; must be a multiple of the card's ``size_divisor_px``.
        overlap_px: Pixels shared by neighbouring tiles.
        batch_size: Tiles per model call.
        extent: Process only inside ``(xmin, ymin, xmax, ymax)`` in the raster's CRS.
        mask_geometries: Process only inside these GeoJSON geometries (raster CRS).
        resample_to_model_gsd: Resample to the card's ground sampling distance before inference.
        value_scaling: How raw values map to the model's range: ``card`` (its ``input_value_range``), ``minmax`` or
            ``percentile`` (each band's own range; see :mod:`engine.raster.value_scaling`).
        stitching: A name from :data:`engine.inference.stitching.STITCHING_STRATEGIES`.
        tta: A name from :data:`engine.inference.tta.TTA_MODES` (``"flip"`` is 3x the model work, ``"d4"`` 8x).
        tile_grid: ``"raster"`` (tiles start at the raster's top-left pixel) or ``"anchored"`` (tiles on a lattice
            fixed in the CRS, so overlapping clips of one image agree; up to one more tile row and column).
        cog: Write Cloud Optimized GeoTIFFs.
        heatmap_dtype: Heatmap storage: ``"uint16"`` (probabilities in steps of 1e-4) or ``"uint8"`` (steps of
            0.004: half the bytes, and less work to write).
        num_threads: CPU threads for the backend; None = the backend's default.
        hbis_heatmaps_path: BiCoR-Seg's HBIS class heatmaps of one layer to write (GeoTIFF), or None.
        hbis_layer: Which HBIS layer, from 0 (the paper's H_1); -1 = the last.
        vector_path: Class polygons to write (``.gpkg``, ``.fgb``, ``.geojson``), or None.
        min_area_m2: Regions smaller than this (m²) merge into their largest neighbour before polygonizing.
    """

    input_path: Path
    output_path: Path
    heatmaps_path: Path | None = None
    model_path: Path | None = None
    device: DeviceOption = "auto"
    backend: BackendOption = "auto"
    bands: tuple[int, ...] | None = None
    tile_size_px: int | None = None
    overlap_px: int | None = None
    batch_size: int | None = None
    extent: tuple[float, float, float, float] | None = None
    mask_geometries: tuple[Mapping[str, Any], ...] | None = None
    resample_to_model_gsd: bool = True
    value_scaling: ValueScaling = "card"
    stitching: str = "gaussian"
    tta: TtaMode = "none"
    tile_grid: TileGrid = "raster"
    cog: bool = False
    heatmap_dtype: HeatmapDtype = "uint16"
    num_threads: int | None = None
    hbis_heatmaps_path: Path | None = None
    hbis_layer: int = LAST_HBIS_LAYER
    vector_path: Path | None = None
    min_area_m2: float = 0.0

    def __post_init__(self) -> None:
        """Check the options that do not need the model or the raster."""
        if self.stitching not in STITCHING_STRATEGIES:
            raise InvalidInputError(
                f"Unknown stitching '{self.stitching}'; choose one of: {', '.join(stitching_names())}."
            )
        if self.tta not in TTA_MODES:
            raise InvalidInputError(
                f"Unknown test-time augmentation '{self.tta}'; choose one of: {', '.join(TTA_MODES)}."
            )
        check_value_scaling(self.value_scaling)
        if self.tile_grid not in TILE_GRIDS:
            raise InvalidInputError(f"Unknown tile grid '{self.tile_grid}'; choose one of: {', '.join(TILE_GRIDS)}.")
        if self.heatmap_dtype not in HEATMAP_DTYPES:
            raise InvalidInputError(
                f"Unknown heatmap data type '{self.heatmap_dtype}'; choose one of: {', '.join(HEATMAP_DTYPES)}."
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidInputError(f"Batch size must be at least 1, got {self.batch_size}.")
        if self.num_threads is not None and self.num_threads < 1:
            raise InvalidInputError(f"Thread count must be at least 1, got {self.num_threads}.")
        if self.hbis_layer < LAST_HBIS_LAYER:
            raise InvalidInputError(
                f"HBIS layer {self.hbis_layer} is not valid; layers are numbered from 0, and -1 means the last "
                "(HBIS_LAYER)."
            )
        if self.hbis_layer != LAST_HBIS_LAYER and self.hbis_heatmaps_path is None:
            raise InvalidInputError(
                f"HBIS layer {self.hbis_layer} was chosen but no HBIS heatmaps are written; give HBIS_HEATMAPS too, or "
                "leave the layer at -1."
            )
        if self.min_area_m2 and self.vector_path is None:
            raise InvalidInputError(
                f"A minimum area of {self.min_area_m2} m² applies to the vector output, which was not asked for; give "
                "VECTOR_OUTPUT too, or set the minimum area to 0."
            )

    @property
    def vector(self) -> VectorOutput | None:
        """The vector output asked for (path and minimum area), or None."""
        if self.vector_path is None:
            return None
        return VectorOutput(Path(self.vector_path), float(self.min_area_m2))


@dataclass(frozen=True)
class SegmentationResult:
    """What a finished run produced and how.

    Attributes:
        output_path: The class raster written.
        heatmaps_path: The heatmaps written, or None.
        hbis_heatmaps_path: The HBIS heatmaps written, or None.
        hbis_layer: The HBIS layer written (0-based, resolved from -1), or None.
        vector_path: The class polygons written, or None.
        vector_feature_count: Polygons written (0 without a vector output).
        card: The model card used.
        model_sha256: SHA-256 of the model file.
        backend: Backend that ran the model.
        device: Device it ran on.
        device_reason: Why that device was chosen.
        class_pixel_counts: Pixels per class on the input grid, in class-index order.
        valid_pixel_count: Pixels with a class on the input grid.
        tile_count: Tiles in the grid (including skipped all-nodata tiles).
        elapsed_s: Wall-clock seconds of the whole run.
    """

    output_path: Path
    heatmaps_path: Path | None
    card: ModelCard
    model_sha256: str
    backend: str
    device: str
    device_reason: str
    class_pixel_counts: tuple[int, ...]
    valid_pixel_count: int
    tile_count: int
    elapsed_s: float
    hbis_heatmaps_path: Path | None = None
    hbis_layer: int | None = None
    vector_path: Path | None = None
    vector_feature_count: int = 0


def resolve_tiling(
    request: SegmentationRequest, card: ModelCard, model_input_size_px: tuple[int, int] | None = None
) -> TilingSpec:
    """The tile size and overlap of a run: the request's, else the model's fixed input size, else the card's.

    Args:
        request: The run (its ``tile_size_px`` and ``overlap_px``; None = from the model).
        card: The model card.
        model_input_size_px: The (height, width) an ONNX model's input is fixed to, None where it is dynamic.

    Raises:
        InvalidInputError: If the tile size is not a multiple of the card's ``size_divisor_px`` (the message
            names the nearest valid size), differs from the model's fixed input size, or the overlap does not fit.
        ModelLoadError: If the model's fixed input is not square (the engine cuts square tiles).
    """
    if model_input_size_px is not None:
        height, width = model_input_size_px
        if height != width:
            raise ModelLoadError(
                f"Model '{card.name}' takes a fixed {width} x {height} px input; the engine cuts square tiles. "
                "Re-export the model with a square or a dynamic input size."
            )
        if request.tile_size_px is not None and request.tile_size_px != height:
            raise InvalidInputError(
                f"Model '{card.name}' takes a fixed {height} x {height} px input, so tiles must be {height} px, not "
                f"{request.tile_size_px}; use TILE_SIZE 0 (or TILE_SIZE {height})."
            )
        tile = height
    else:
        tile = card.tile_size_px if request.tile_size_px is None else request.tile_size_px
        divisor = card.size_divisor_px
        if tile < 1 or tile % divisor:
            nearest = max(divisor, round(tile / divisor) * divisor)
            raise InvalidInputError(
                f"Tile size {tile} px does not fit model '{card.name}', which needs a multiple of {divisor} px; "
                f"use a tile size of {nearest} px."
            )
    overlap = request.overlap_px
    if overlap is None:
        # The card's overlap is meant for the card's tile size; keep it unless it would eat half a smaller tile.
        overlap = card.overlap_px if card.overlap_px < tile // 2 else tile // 4
    return TilingSpec(tile, overlap)


def clamp_tiling(
    spec: TilingSpec,
    height: int,
    width: int,
    size_divisor_px: int,
    requested: bool = True,
) -> tuple[TilingSpec, str]:
    """Shrink a tile larger than the raster to the smallest size that still covers it in one tile.

    A tile is read, run and blended whole: one larger than the raster (padded to the model's size divisor) only
    costs memory and time (a 100,000 px tile would need a 112 GiB read buffer). Not for models with a fixed input
    size, whose tiles must keep it.

    Args:
        spec: The tiling from :func:`resolve_tiling`.
        height: Rows of the processing grid.
        width: Columns of the processing grid.
        size_divisor_px: The card's size divisor (tile edges are multiples of it).
        requested: Whether the user asked for this tile size (else it is the card's), for the message.

    Returns:
        The tiling to use, and the line saying so ("" when nothing changed).
    """
    cover = -(-max(height, width) // size_divisor_px) * size_divisor_px
    if spec.tile_size_px <= cover:
        return spec, ""
    overlap = spec.overlap_px if spec.overlap_px < cover else cover // 4
    source = f"TILE_SIZE {spec.tile_size_px}" if requested else "the model card's"
    note = (
        f"Tile size {spec.tile_size_px:,} px ({source}) is larger than the {width:,} x {height:,} px processing "
        f"grid: using {cover:,} px, the smallest tile that covers it."
    )
    return TilingSpec(cover, overlap), note


def check_output_paths(request: SegmentationRequest) -> None:
    """Fail before any work if an output of ``request`` cannot be written or would clobber the input.

    Raises:
        OutputPathError: Naming the path and what to do instead (see :func:`engine.raster.output_paths`).
        InvalidInputError: For a vector output in a format that cannot be written.
        BackendUnavailableError: For a vector output without GDAL's Python bindings.
    """
    rasters = [request.output_path, request.heatmaps_path, request.hbis_heatmaps_path]
    outputs = [Path(path) for path in rasters if path]
    vectors = [Path(request.vector_path)] if request.vector_path else []
    check_raster_outputs(outputs, Path(request.input_path), vector_outputs=vectors)
    for vector in vectors:
        check_vector_output(vector)
