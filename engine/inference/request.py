"""What a segmentation run is asked to do and what it reports back, and the checks made before any work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.contract import BackendOption, DeviceOption
from ..errors import InvalidInputError
from ..model_card import ModelCard
from ..raster.heatmaps import HEATMAP_DTYPES, HeatmapDtype
from ..raster.output_paths import check_output_paths as check_raster_outputs
from .stitching import STITCHING_STRATEGIES, stitching_names
from .tiling import TILE_GRIDS, TileGrid, TilingSpec
from .tta import TTA_MODES, TtaMode

__all__ = [
    "TTA_MODES",
    "SegmentationRequest",
    "SegmentationResult",
    "check_output_paths",
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
        stitching: A name from :data:`engine.inference.stitching.STITCHING_STRATEGIES`.
        tta: A name from :data:`engine.inference.tta.TTA_MODES` (``"flip"`` is 3x the model work, ``"d4"`` 8x).
        tile_grid: ``"raster"`` (tiles start at the raster's top-left pixel) or ``"anchored"`` (tiles on a lattice
            fixed in the CRS, so overlapping clips of one image agree; up to one more tile row and column).
        cog: Write Cloud Optimized GeoTIFFs.
        heatmap_dtype: Heatmap storage: ``"uint16"`` (probabilities in steps of 1e-4) or ``"uint8"`` (steps of
            0.004: half the bytes, and less work to write).
        num_threads: CPU threads for the backend; None = the backend's default.
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
    stitching: str = "gaussian"
    tta: TtaMode = "none"
    tile_grid: TileGrid = "raster"
    cog: bool = False
    heatmap_dtype: HeatmapDtype = "uint16"
    num_threads: int | None = None

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


@dataclass(frozen=True)
class SegmentationResult:
    """What a finished run produced and how.

    Attributes:
        output_path: The class raster written.
        heatmaps_path: The heatmaps written, or None.
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


def resolve_tiling(request: SegmentationRequest, card: ModelCard) -> TilingSpec:
    """The tile size and overlap of a run: the request's, else the card's, checked against the model.

    Raises:
        InvalidInputError: If the tile size is not a multiple of the card's ``size_divisor_px`` (the message
            names the nearest valid size) or the overlap does not fit the tile.
    """
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


def check_output_paths(request: SegmentationRequest) -> None:
    """Fail before any work if an output of ``request`` cannot be written or would clobber the input.

    Raises:
        OutputPathError: Naming the path and what to do instead (see :func:`engine.raster.output_paths`).
    """
    outputs = [Path(request.output_path)] + ([Path(request.heatmaps_path)] if request.heatmaps_path else [])
    check_raster_outputs(outputs, Path(request.input_path))
