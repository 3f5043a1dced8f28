"""Assemble the workers' block-aligned parts into the run's outputs with the engine's own writer.

The parts hold the encoded values (classes, quantised heatmaps) exactly as a single writer writes them. They are
read one output block row at a time, side by side across the super-tiles of that row, and handed to
:meth:`~engine.raster.writer.SegmentationWriter.write_encoded_rows`; :meth:`~engine.raster.writer.SegmentationWriter.commit`
then does what it does for a single-process run: resample back to the input grid if the processing grid differs,
class counts, category names, COG with overviews if asked, and one atomic move into place. Memory: one block row
of the output (``256 x width x (1 + 2K)`` bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from ..errors import OutputPathError
from ..model_card import ModelCard
from ..raster.geotiff import BLOCK_SIZE_PX
from ..raster.reader import RasterSource
from ..raster.writer import SegmentationWriter
from .plan import SuperTile
from .worker import PartResult

__all__ = ["assemble_parts"]


def assemble_parts(
    source: RasterSource,
    plan: Sequence[SuperTile],
    parts: Mapping[int, PartResult],
    output_path: Path,
    heatmaps_path: Path | None,
    card: ModelCard,
    tags: Mapping[str, str],
    cog: bool = False,
    on_rows: Callable[[int], None] | None = None,
    heatmap_dtype: str = "uint16",
) -> tuple[int, ...]:
    """Write the outputs of a distributed run from its parts and move them into place.

    Args:
        source: The open input (its processing grid is the parts' grid; its input grid the outputs').
        plan: The super-tiles, row-major.
        parts: Each super-tile's finished part, by index.
        output_path: Class raster destination.
        heatmaps_path: Heatmaps destination, or None.
        card: The model card (class names, colours).
        tags: Provenance tags of the outputs.
        cog: Write Cloud-Optimised GeoTIFFs (with overviews).
        on_rows: Called with the number of rows after each block row (progress; may raise to cancel).
        heatmap_dtype: The heatmaps' storage, as the parts were written (``uint16`` or ``uint8``).

    Returns:
        Pixels per class on the input grid.

    Raises:
        OutputPathError: If a part cannot be read or an output cannot be written.
    """
    rows_of_plan: dict[int, list[SuperTile]] = {}
    for tile in plan:
        rows_of_plan.setdefault(tile.grid_row, []).append(tile)
    with SegmentationWriter(
        source, output_path, heatmaps_path, card, tags, cog=cog, heatmap_dtype=heatmap_dtype
    ) as writer:
        for row_tiles in (sorted(r, key=lambda t: t.col_off_px) for _, r in sorted(rows_of_plan.items())):
            with ExitStack() as stack:
                opened = [
                    (tile, *_open_part(stack, parts[tile.index], heatmaps_path is not None)) for tile in row_tiles
                ]
                top, height = row_tiles[0].row_off_px, row_tiles[0].height_px
                for local in range(0, height, BLOCK_SIZE_PX):
                    rows = min(BLOCK_SIZE_PX, height - local)
                    classes = np.empty((rows, source.width), dtype=np.uint8)
                    heat = None
                    if heatmaps_path is not None:
                        heat = np.empty((card.num_classes, rows, source.width), dtype=heatmap_dtype)
                    for tile, classes_ds, heat_ds in opened:
                        window = Window(0, local, tile.width_px, rows)
                        columns = slice(tile.col_off_px, tile.col_off_px + tile.width_px)
                        classes[:, columns] = _read(classes_ds, window, output_path, band=1)
                        if heat is not None and heat_ds is not None:
                            heat[:, :, columns] = _read(heat_ds, window, output_path)
                    writer.write_encoded_rows(top + local, classes, heat)
                    if on_rows is not None:
                        on_rows(rows)
        writer.commit()
    return writer.class_pixel_counts


def _open_part(
    stack: ExitStack, part: PartResult, heatmaps: bool
) -> tuple[rasterio.io.DatasetReader, rasterio.io.DatasetReader | None]:
    try:
        classes = stack.enter_context(rasterio.open(part.classes_path))
        heat = None
        if heatmaps and part.heatmaps_path is not None:
            heat = stack.enter_context(rasterio.open(part.heatmaps_path))
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise OutputPathError(
            f"Cannot read the part '{part.classes_path}' written by worker {part.worker} ({exc}); the parts folder "
            "must be on a file system the client and every worker share."
        ) from exc
    return classes, heat


def _read(dataset: rasterio.io.DatasetReader, window: Window, output_path: Path, band: int | None = None) -> np.ndarray:  # type: ignore[type-arg]
    try:
        data: np.ndarray = dataset.read(band, window=window) if band is not None else dataset.read(window=window)  # type: ignore[type-arg]
    except rasterio.errors.RasterioError as exc:
        raise OutputPathError(
            f"Reading the part '{dataset.name}' for '{output_path}' failed ({exc}); is the shared disk full or gone?"
        ) from exc
    return data
