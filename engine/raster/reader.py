"""Raster input: windowed, boundless, normalised tile reads with a validity mask, on the model's grid.

A :class:`RasterSource` opens the input raster once and serves tiles on its *processing grid*: the input grid
itself, or, when the raster's ground sampling distance differs from the card's ``gsd_m`` by more than
:data:`GSD_TOLERANCE`, a grid with the same bounds at the model's resolution (read through a ``WarpedVRT``).
:class:`~engine.raster.writer.SegmentationWriter` writes the results back on the input grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import InvalidRasterError
from ..model_card import ModelCard
from .bands import BandLayout, Normalizer, match_bands
from .regions import RegionFilter

__all__ = ["EDGE_PADDING", "GSD_TOLERANCE", "SNAP_PROCESSING_GRID", "RasterSource", "mirror_indices"]

logger = logging.getLogger(__name__)

#: Relative GSD difference above which tiles are resampled to the model's resolution.
GSD_TOLERANCE = 0.05
#: How the part of a tile outside the processing grid is filled: ``"reflect"`` mirrors the raster's own pixels
#: about its edge, up to ``mirror_depth_px`` beyond it (the reach of the tile grid, half the overlap), and band means
#: further out, where tiles of the last row or column reach; ``"mean"`` (before issue 13) filled all of it with the
#: band means, a flat grey block right at the edge, which made the answers there depend on where the tiles fell.
#: Mirroring without a limit cost the default model 1.9 mIoU points on its test tile (whole tiles of mirror images
#: look like real structure); limited to the grid's reach it scored within 0.3 points of band means.
EDGE_PADDING = "reflect"
#: Put a resampled processing grid on the lattice of the card's GSD in the CRS (exact pixel size, origin on a
#: multiple of it) instead of stretching ``round(size * factor)`` pixels over the raster's own extent, so two rasters
#: of the same imagery cut at different places are resampled onto the same pixels.
SNAP_PROCESSING_GRID = True


class RasterSource:
    """An open input raster serving normalised tiles on the processing grid (a context manager).

    Attributes:
        path: The raster's path.
        card: The model card the tiles are prepared for.
        band_indexes: 1-based raster bands feeding the model, in the card's band order.
        height: Rows of the processing grid (== ``input_height`` unless resampled to the card's ``gsd_m``).
        width: Columns of the processing grid.
        input_height: Rows of the input raster.
        input_width: Columns of the input raster.
        crs: The input raster's CRS (None without georeference).
        transform: The input grid's affine transform.
        processing_transform: The processing grid's affine transform (== ``transform`` unless resampled).
        georeferenced: Whether the raster has a CRS and a geotransform.
        resampled: Whether the processing grid differs from the input grid.
        input_gsd_m: The raster's pixel size in metres (mean of x and y), None where unknown.
    """

    def __init__(
        self,
        dataset: DatasetReader,
        card: ModelCard,
        band_indexes: tuple[int, ...],
        regions: RegionFilter,
        resample_to_model_gsd: bool,
        mirror_depth_px: int | None = None,
    ) -> None:
        self.path = Path(dataset.name)
        self.mirror_depth_px = mirror_depth_px
        self.card = card
        self.band_indexes = band_indexes
        self.input_height: int = dataset.height
        self.input_width: int = dataset.width
        self.crs = dataset.crs
        self.transform: Affine = dataset.transform
        self.georeferenced = _is_georeferenced(dataset)
        self.input_gsd_m = _gsd_m(dataset) if self.georeferenced else None
        self._dataset = dataset
        self._regions = regions
        self._normalizer = Normalizer.from_card(card)
        self._closed = False
        grid = _processing_grid(dataset, card, self.input_gsd_m) if resample_to_model_gsd else None
        self._reader: DatasetReader | WarpedVRT = dataset
        self.processing_transform: Affine = dataset.transform
        self.height: int = dataset.height
        self.width: int = dataset.width
        self.resampled = grid is not None
        if grid is not None:
            self.processing_transform, self.height, self.width = grid
            self._reader = _warped_reader(dataset, self.processing_transform, self.height, self.width, card)
            logger.info(
                "Resampling %s from %.3g m to the model's %.3g m: processing grid %d x %d (input %d x %d).",
                self.path.name, self.input_gsd_m, card.gsd_m, self.width, self.height,
                self.input_width, self.input_height,
            )  # fmt: skip

    @classmethod
    def open(
        cls,
        path: Path,
        card: ModelCard,
        bands: tuple[int, ...] | None = None,
        resample_to_model_gsd: bool = True,
        extent: tuple[float, float, float, float] | None = None,
        mask_geometries: Sequence[Mapping[str, Any]] | None = None,
        mirror_depth_px: int | None = None,
    ) -> RasterSource:
        """Open a raster for the model described by ``card``.

        Args:
            path: Any GDAL-readable raster (GeoTIFF, COG, VRT, ...).
            card: The model card (input bands, value range, normalisation, ``gsd_m``).
            bands: Explicit 1-based band indexes in the card's band order; default: matched by colour
                interpretation / band description (see :func:`engine.raster.bands.match_bands`).
            resample_to_model_gsd: Read on a grid at the card's ``gsd_m`` when the raster's differs.
            extent: ``(xmin, ymin, xmax, ymax)`` in the raster's CRS; pixels outside are invalid.
            mask_geometries: GeoJSON polygon geometries in the raster's CRS; pixels outside all of them are invalid.
            mirror_depth_px: How far beyond the raster's edge tiles mirror it (:data:`EDGE_PADDING` ``"reflect"``);
                band means further out. None: no limit. The pipeline uses half the overlap, the reach of its grid.

        Raises:
            InvalidRasterError: If the file is missing or unreadable, or its bands do not fit the model.
            InvalidInputError: If the extent or the mask geometries are malformed or miss the raster.
        """
        path = Path(path)
        name = str(path)
        if not name.startswith("/vsi") and "://" not in name and not path.exists():
            raise InvalidRasterError(f"Input raster '{path}' does not exist; check the path.")
        try:
            dataset = rasterio.open(path)
        except (RasterioError, OSError) as exc:
            raise InvalidRasterError(
                f"Cannot open '{path}' as a raster ({exc}); give a complete GeoTIFF, VRT or other GDAL raster."
            ) from exc
        try:
            layout = BandLayout(
                colorinterps=tuple(ci.name.lower() for ci in dataset.colorinterp),
                descriptions=tuple(d or "" for d in dataset.descriptions),
            )
            band_indexes = match_bands(layout, card, bands, raster_name=f"'{path.name}'")
            regions = RegionFilter.create(extent, mask_geometries, dataset.bounds)
            _warn_about_input(dataset, card, band_indexes)
            return cls(dataset, card, band_indexes, regions, resample_to_model_gsd, mirror_depth_px)
        except BaseException:
            dataset.close()
            raise

    def read_tile(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Read one tile of the processing grid, boundless.

        Args:
            window: Pixel window on the processing grid; may extend past the raster's edges.

        Returns:
            ``(tile, valid)``: the tile (C, h, w) float32 normalised per the card, bands in the model's order, 0
            (the band mean) wherever there is no data; and the (h, w) mask, False for nodata, masked, alpha == 0,
            non-finite, outside EXTENT/MASK or outside the raster. ``h, w`` equal the window's size.
        """
        rows, cols, inner, _, _ = _split_window(window, self.height, self.width)
        if EDGE_PADDING == "reflect" and inner is not None and (int(inner.height), int(inner.width)) != (rows, cols):
            tile, valid = self._read_mirrored(window, rows, cols)
        else:
            tile, valid = self._read_normalised(window)
        region = self._regions.inside(window, self.processing_transform)
        if region is not None:
            valid &= region
        return tile, valid

    def _read_mirrored(self, window: Window, rows: int, cols: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """A window reaching past the grid: the outside part mirrors the grid's own pixels (and is invalid)."""
        row_off, col_off = round(window.row_off), round(window.col_off)
        source_rows = mirror_indices(row_off, rows, self.height)
        source_cols = mirror_indices(col_off, cols, self.width)
        top, left = int(source_rows.min()), int(source_cols.min())
        box = Window(left, top, int(source_cols.max()) - left + 1, int(source_rows.max()) - top + 1)
        box_tile, box_valid = self._read_normalised(box)  # a window inside the grid
        take = np.ix_(source_rows - top, source_cols - left)
        tile: NDArray[np.float32] = box_tile[:, take[0], take[1]]
        # Mirroring maps every index inside the grid to itself, and only those.
        inside_rows = source_rows == np.arange(row_off, row_off + rows)
        inside_cols = source_cols == np.arange(col_off, col_off + cols)
        valid = box_valid[take] & inside_rows[:, None] & inside_cols[None, :]
        if self.mirror_depth_px is not None:
            far = beyond_mirror_depth(row_off, rows, self.height, col_off, cols, self.width, self.mirror_depth_px)
            if far.any():
                tile[:, far] = 0.0  # the band mean
        return tile, valid

    def _read_normalised(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Normalised tile (band means outside the raster and at invalid pixels) and its validity."""
        raw, valid = self._read_raw(self._reader, window, self.height, self.width)
        tile = self._normalizer(raw)
        if not np.isfinite(tile.sum()):  # finite total: every value is (an overflow only sends us the long way)
            valid &= np.isfinite(tile).all(axis=0)
        # Pixels without data become the band mean (0 after normalisation) so they do not disturb the
        # model's view of their valid neighbours; imagery outside EXTENT/MASK is real and stays as context.
        if not valid.all():
            tile[:, ~valid] = 0.0
        return tile, valid

    def read_input_valid(self, window: Window) -> NDArray[np.bool_]:
        """Validity (nodata, masks, alpha, EXTENT, MASK) of a window of the *input* grid, boundless.

        The writer uses it to cut results resampled back from the processing grid exactly to the input's valid
        pixels.
        """
        valid = self._read_valid(self._dataset, window, self.input_height, self.input_width)
        region = self._regions.inside(window, self.transform)
        if region is not None:
            valid &= region
        return valid

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Release the dataset (and the warped view). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not self._dataset:
            self._reader.close()
        self._dataset.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RasterSource('{self.path}', bands={self.band_indexes}, grid={self.width}x{self.height}, "
            f"input={self.input_width}x{self.input_height}, resampled={self.resampled})"
        )

    # --- reading -------------------------------------------------------------------------------------------

    def _read_raw(
        self, reader: DatasetReader | WarpedVRT, window: Window, height: int, width: int
    ) -> tuple[NDArray[np.generic], NDArray[np.bool_]]:
        """Raw values (C, h, w) padded with the band means outside the raster, and their validity mask."""
        rows, cols, inner, r0, c0 = _split_window(window, height, width)
        dtypes = [np.dtype(reader.dtypes[b - 1]) for b in self.band_indexes]
        # 8/16-bit integers are exact in float32 (half the memory traffic); 32-bit and float data keep float64.
        exact32 = all(d.kind in "iub" and d.itemsize <= 2 for d in dtypes)
        work = np.float32 if exact32 else np.float64
        if inner is not None and (int(inner.height), int(inner.width)) == (rows, cols):
            # The whole window lies inside: GDAL converts while reading, no padding to fill.
            return self._read_inner(reader, inner, work), self._inner_valid(reader, inner)
        raw: NDArray[np.generic] = np.empty((len(self.band_indexes), rows, cols), dtype=work)
        raw[...] = np.asarray(self._normalizer.raw_value_for_zero())[:, None, None]
        valid = np.zeros((rows, cols), dtype=bool)
        if inner is None:
            return raw, valid
        r1, c1 = r0 + int(inner.height), c0 + int(inner.width)
        raw[:, r0:r1, c0:c1] = self._read_inner(reader, inner, work)
        valid[r0:r1, c0:c1] = self._inner_valid(reader, inner)
        return raw, valid

    def _read_inner(self, reader: DatasetReader | WarpedVRT, inner: Window, work: type) -> NDArray[np.generic]:
        try:
            data: NDArray[np.generic] = reader.read(self.band_indexes, window=inner, out_dtype=work)
        except RasterioError as exc:
            raise InvalidRasterError(
                f"Reading {inner} of '{self.path}' failed ({exc}); the file may be truncated or corrupt: "
                "re-create or re-download it."
            ) from exc
        return data

    def _read_valid(
        self, reader: DatasetReader | WarpedVRT, window: Window, height: int, width: int
    ) -> NDArray[np.bool_]:
        rows, cols, inner, r0, c0 = _split_window(window, height, width)
        valid = np.zeros((rows, cols), dtype=bool)
        if inner is not None:
            valid[r0 : r0 + int(inner.height), c0 : c0 + int(inner.width)] = self._inner_valid(reader, inner)
        return valid

    def _inner_valid(self, reader: DatasetReader | WarpedVRT, inner: Window) -> NDArray[np.bool_]:
        """GDAL mask of a window inside the raster: alpha > 0, internal mask, or any band not nodata."""
        flags = [reader.mask_flag_enums[b - 1] for b in self.band_indexes]
        shape = (int(inner.height), int(inner.width))
        if all(MaskFlags.all_valid in f for f in flags):
            return np.ones(shape, dtype=bool)
        # A per-dataset mask (alpha or internal) is shared by every band: one band's mask is enough.
        indexes = self.band_indexes[:1] if all(MaskFlags.per_dataset in f for f in flags) else self.band_indexes
        try:
            masks = reader.read_masks(list(indexes), window=inner)
        except RasterioError as exc:
            raise InvalidRasterError(
                f"Reading the mask of '{self.path}' failed ({exc}); is the file complete?"
            ) from exc
        # With nodata values a pixel is invalid only where every band is nodata (GDAL's dataset-mask rule).
        return np.asarray((masks > 0).any(axis=0), dtype=bool)


def _split_window(window: Window, height: int, width: int) -> tuple[int, int, Window | None, int, int]:
    """Split a window (rounded to whole pixels) against a ``height`` x ``width`` grid.

    Returns:
        ``(rows, cols, inner, r0, c0)``: the window's size, its part inside the grid (None if it is all outside)
        and where that part starts inside the window.
    """
    rows, cols = round(window.height), round(window.width)
    row_off, col_off = round(window.row_off), round(window.col_off)
    top, left = max(row_off, 0), max(col_off, 0)
    bottom, right = min(row_off + rows, height), min(col_off + cols, width)
    if bottom <= top or right <= left:
        return rows, cols, None, 0, 0
    return rows, cols, Window(left, top, right - left, bottom - top), top - row_off, left - col_off


def mirror_indices(start: int, count: int, length: int) -> NDArray[np.intp]:
    """Indices ``start .. start + count - 1`` of an axis of ``length`` pixels, mirrored back inside it.

    Mirrored about the edge pixels (``... c b | a b c ... x y z | y x ...``, as ``numpy.pad(mode="reflect")`` of
    the whole axis), repeatedly for indices further out than the axis is long.
    """
    index = np.arange(start, start + count, dtype=np.intp)
    if length == 1:
        return np.zeros(count, dtype=np.intp)
    period = 2 * (length - 1)
    index %= period
    mirrored: NDArray[np.intp] = np.where(index >= length, period - index, index)
    return mirrored


def beyond_mirror_depth(
    row_off: int, rows: int, height: int, col_off: int, cols: int, width: int, depth_px: int
) -> NDArray[np.bool_]:
    """(rows, cols) mask of a window's pixels more than ``depth_px`` outside a ``height`` x ``width`` grid."""
    r = np.arange(row_off, row_off + rows)
    c = np.arange(col_off, col_off + cols)
    out_r = np.maximum(np.maximum(-r, r - (height - 1)), 0)
    out_c = np.maximum(np.maximum(-c, c - (width - 1)), 0)
    far: NDArray[np.bool_] = np.maximum(out_r[:, None], out_c[None, :]) > depth_px
    return far


def _is_georeferenced(dataset: DatasetReader) -> bool:
    return dataset.crs is not None and dataset.transform != Affine.identity()


def _gsd_m(dataset: DatasetReader) -> float | None:
    """Mean pixel size in metres of a north-up raster in a projected CRS; None where it cannot be known."""
    metres_per_unit = _metres_per_unit(dataset)
    if metres_per_unit is None:
        return None
    transform = dataset.transform
    return float((abs(transform.a) + abs(transform.e)) / 2.0 * metres_per_unit)


def _metres_per_unit(dataset: DatasetReader) -> float | None:
    """Metres per CRS unit of a north-up raster in a projected CRS; None where it cannot be known."""
    crs, transform = dataset.crs, dataset.transform
    if crs is None or not crs.is_projected or transform.b != 0 or transform.d != 0:
        return None
    try:
        _, metres_per_unit = crs.linear_units_factor
    except (CRSError, ValueError):  # exotic CRS definitions without linear units: treat the GSD as unknown
        return None
    return float(metres_per_unit)


def _processing_grid(
    dataset: DatasetReader, card: ModelCard, input_gsd_m: float | None
) -> tuple[Affine, int, int] | None:
    """Grid with the raster's bounds at the card's GSD, or None when no resampling is wanted."""
    if card.gsd_m is None or input_gsd_m is None:
        return None
    if abs(input_gsd_m - card.gsd_m) <= GSD_TOLERANCE * card.gsd_m:
        return None
    metres_per_unit = _metres_per_unit(dataset)
    if SNAP_PROCESSING_GRID and metres_per_unit is not None:
        return _lattice_grid(dataset.transform, dataset.height, dataset.width, card.gsd_m / metres_per_unit)
    factor = input_gsd_m / card.gsd_m
    height = max(1, round(dataset.height * factor))
    width = max(1, round(dataset.width * factor))
    # Same bounds exactly: the pixel size is the card's GSD up to the rounding of the grid size.
    transform = dataset.transform * Affine.scale(dataset.width / width, dataset.height / height)
    return transform, height, width


def _lattice_grid(transform: Affine, height: int, width: int, pixel: float) -> tuple[Affine, int, int]:
    """The smallest grid of ``pixel``-sized cells on the CRS lattice ``k * pixel`` covering a north-up raster.

    Its origin is the raster's outer corner rounded outwards to a multiple of ``pixel`` and its size is rounded up,
    so it covers the raster (by less than one cell more on each side). Two rasters of the same imagery cut at
    different places get grids that share their cells, whatever their extents.
    """
    sx, sy = (1.0 if transform.a > 0 else -1.0), (1.0 if transform.e > 0 else -1.0)
    x0, y0 = transform.c, transform.f
    x1, y1 = x0 + transform.a * width, y0 + transform.e * height
    col0 = _lattice_floor(x0 / pixel * sx)
    row0 = _lattice_floor(y0 / pixel * sy)
    new_width = max(1, _lattice_ceil(x1 / pixel * sx) - col0)
    new_height = max(1, _lattice_ceil(y1 / pixel * sy) - row0)
    grid = Affine(sx * pixel, 0.0, col0 * pixel * sx, 0.0, sy * pixel, row0 * pixel * sy)
    return grid, new_height, new_width


#: Coordinates within this many cells of a lattice line count as on it (float noise in geotransforms).
_LATTICE_EPS = 1e-6


def _lattice_floor(cells: float) -> int:
    return math.floor(cells + _LATTICE_EPS)


def _lattice_ceil(cells: float) -> int:
    return math.ceil(cells - _LATTICE_EPS)


def _warped_reader(dataset: DatasetReader, transform: Affine, height: int, width: int, card: ModelCard) -> WarpedVRT:
    downsampling = width < dataset.width
    has_alpha = any(ci.name == "alpha" for ci in dataset.colorinterp)
    # An alpha band on the warped view carries every kind of source validity (nodata, internal mask,
    # outside the footprint); a source alpha band already plays that role and is warped as one.
    return WarpedVRT(
        dataset,
        crs=dataset.crs,
        transform=transform,
        height=height,
        width=width,
        resampling=Resampling.average if downsampling else Resampling.bilinear,
        add_alpha=not has_alpha,
    )


def _warn_about_input(dataset: DatasetReader, card: ModelCard, band_indexes: tuple[int, ...]) -> None:
    name = Path(dataset.name).name
    if not _is_georeferenced(dataset):
        if dataset.gcps[0] or dataset.rpcs:
            logger.warning(
                "%s is georeferenced only by GCPs/RPCs: processing its pixel grid; the outputs will carry no "
                "georeference. Warp it first (gdalwarp) for georeferenced outputs.",
                name,
            )
        else:
            logger.warning(
                "%s has no georeference (no CRS or geotransform): processing its pixel grid; the outputs will carry "
                "no georeference either.",
                name,
            )
    dtypes = {dataset.dtypes[b - 1] for b in band_indexes}
    if dtypes != {card.input_dtype}:
        logger.warning(
            "%s holds %s values but the model was trained on %s imagery scaled from %s; values are scaled by that "
            "range anyway. Check the result, or rescale the raster to the model's range.",
            name, "/".join(sorted(dtypes)), card.input_dtype, card.input_value_range,
        )  # fmt: skip
