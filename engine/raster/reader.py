"""Raster input: windowed, boundless, normalised tile reads with a validity mask, on the model's grid.

A :class:`RasterSource` opens the input raster once and serves tiles on its *processing grid*: the input grid
itself, or, when the raster's ground sampling distance differs from the card's ``gsd_m`` by more than
:data:`~engine.raster.resolution.GSD_TOLERANCE`, a grid with the same bounds at the model's resolution (read
through a ``WarpedVRT``; see :mod:`engine.raster.resolution`, which also refuses resamplings that would multiply
the pixel count by more than 16). Raw values are scaled per :mod:`engine.raster.value_scaling`.
:class:`~engine.raster.writer.SegmentationWriter` writes the results back on the input grid.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import InvalidRasterError, root_cause
from ..model_card import ModelCard
from .bands import BandLayout, Normalizer, match_bands
from .input_identity import InputIdentity
from .regions import RegionFilter
from .resolution import GSD_TOLERANCE, ResolutionPlan, metres_per_unit, pixel_size_m, plan_resolution
from .value_scaling import (
    BandSample,
    card_range_advice,
    check_value_scaling,
    describe_ranges,
    sample_bands,
    scaling_ranges,
    stored_minmax,
)

__all__ = ["EDGE_PADDING", "GSD_TOLERANCE", "SNAP_PROCESSING_GRID", "RasterSource", "mirror_indices", "raster_gsd_m"]

logger = logging.getLogger(__name__)

#: How the part of a tile outside the processing grid is filled: ``"reflect"`` mirrors the raster's own pixels
#: about its edge, up to ``mirror_depth_px`` beyond it (the reach of the tile grid, half the overlap), and band means
#: further out, where tiles of the last row or column reach; ``"mean"`` (before issue 13) filled all of it with the
#: band means, a flat grey block right at the edge, which made the answers there depend on where the tiles fell.
#: How far is the run's policy (:data:`engine.inference.tiling.MIRROR_DEPTH`, unlimited since issue 18; the v2
#: model lost 1.9 mIoU points on its test tile without a limit, the v3 model none).
EDGE_PADDING = "reflect"
#: Put a resampled processing grid of a north-up projected raster on the lattice of the card's GSD in the CRS
#: (:func:`~engine.raster.resolution.lattice_grid`) instead of stretching ``round(size * factor)`` pixels over the
#: raster's own extent, so two rasters of the same imagery cut at different places are resampled onto the same
#: pixels (and an anchored tile grid gives them the same tiles).
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
        has_geotransform: Whether the raster has a geotransform other than the identity (outputs copy it exactly:
            a raster without one gives outputs without one).
        resampled: Whether the processing grid differs from the input grid.
        input_gsd_m: The raster's pixel size in metres (mean of the two pixel vectors), None where unknown.
        resolution: The resolution plan (input and model GSD, processing grid).
        resolution_line: The one line stating the resolutions and the grid.
        resolution_warned: Whether that line was logged as a warning on opening (resolutions more than 4x apart).
        value_scaling: ``card``, ``minmax`` or ``percentile``.
        scaling_line: For ``minmax`` / ``percentile``, the line naming each band's range ("" for ``card``).
    """

    def __init__(
        self,
        dataset: DatasetReader,
        card: ModelCard,
        band_indexes: tuple[int, ...],
        regions: RegionFilter,
        plan: ResolutionPlan,
        value_scaling: str = "card",
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
        self.has_geotransform = dataset.transform != Affine.identity()
        self.resolution = plan
        self.input_gsd_m = plan.input_gsd_m
        self.value_scaling = value_scaling
        self._dataset = dataset
        self._identity = InputIdentity.of(str(dataset.name), [str(dataset.name), *dataset.files])
        self._regions = regions
        self._closed = False
        self._reader: DatasetReader | WarpedVRT = dataset
        self._warped_alpha: int | None = None
        self._normalizer, self.scaling_line = self._choose_normalizer(value_scaling)
        self.processing_transform: Affine = plan.transform(dataset.transform)
        self.height: int = plan.height_px
        self.width: int = plan.width_px
        self.resampled = plan.resampled
        if self.resampled:
            self._reader, self._warped_alpha = _warped_reader(
                dataset, self.processing_transform, self.height, self.width
            )
        self.resolution_line, self.resolution_warned = plan.message(f"'{self.path.name}'")
        if self.resolution_warned:
            logger.warning("%s", self.resolution_line)

    def _choose_normalizer(self, value_scaling: str) -> tuple[Normalizer, str]:
        """The normaliser of the chosen value scaling, and the line describing it (warn when ``card`` misfits)."""
        dataset, card = self._dataset, self.card
        dtypes = [dataset.dtypes[b - 1] for b in self.band_indexes]
        if value_scaling == "card" and set(dtypes) == {card.input_dtype}:
            return Normalizer.from_card(card), ""  # the common case: no sample is read
        sample = self._sample()
        if value_scaling == "card":
            advice = card_range_advice(f"'{self.path.name}'", dtypes, card, sample)
            if advice:
                logger.warning("%s", advice)
            return Normalizer.from_card(card), ""
        stored = [stored_minmax(dataset.tags(b)) for b in self.band_indexes]
        ranges = scaling_ranges(value_scaling, sample, stored)
        if ranges is None:  # nothing valid to measure: the run ends with "contains no valid pixels"
            return Normalizer.from_card(card), ""
        return Normalizer.from_card(card, ranges), describe_ranges(value_scaling, card.input_bands, ranges)

    def _sample(self) -> BandSample:
        def read(window: Window) -> tuple[Any, Any]:
            try:
                data = self._dataset.read(self.band_indexes, window=window)
            except RasterioError as exc:
                raise InvalidRasterError(
                    f"Reading {window} of '{self.path}' failed ({exc}); the file may be truncated or corrupt: "
                    "re-create or re-download it."
                ) from exc
            return data, self._inner_valid(self._dataset, window)

        return sample_bands(read, self.input_height, self.input_width, len(self.band_indexes))

    @classmethod
    def open(
        cls,
        path: Path,
        card: ModelCard,
        bands: tuple[int, ...] | None = None,
        resample_to_model_gsd: bool = True,
        extent: tuple[float, float, float, float] | None = None,
        mask_geometries: Sequence[Mapping[str, Any]] | None = None,
        value_scaling: str = "card",
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
            value_scaling: ``card``, ``minmax`` or ``percentile`` (see :mod:`engine.raster.value_scaling`).
            mirror_depth_px: How far beyond the raster's edge tiles mirror it (:data:`EDGE_PADDING` ``"reflect"``);
                band means further out. None: no limit (what runs use, :func:`engine.inference.tiling.mirror_depth_px`).

        Raises:
            InvalidRasterError: If the file is missing or unreadable, its bands do not fit the model, or resampling
                to the model's resolution would multiply the pixel count by more than 16.
            InvalidInputError: If the extent or the mask geometries are malformed or miss the raster, or the value
                scaling is unknown.
        """
        check_value_scaling(value_scaling)
        path = Path(path)
        name = str(path)
        if not name.startswith("/vsi") and "://" not in name and not path.exists():
            raise InvalidRasterError(f"Input raster '{path}' does not exist; check the path.")
        try:
            with warnings.catch_warnings():  # the engine says itself, once, when a raster has no georeference
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                dataset = rasterio.open(path)
        except (RasterioError, OSError) as exc:
            raise InvalidRasterError(
                f"Cannot open '{path}' as a raster ({root_cause(exc)}); give a complete GeoTIFF, VRT or other GDAL "
                "raster."
            ) from exc
        try:
            _check_sources_exist(dataset, path)
            layout = BandLayout(
                colorinterps=tuple(ci.name.lower() for ci in dataset.colorinterp),
                descriptions=tuple(d or "" for d in dataset.descriptions),
            )
            band_indexes = match_bands(layout, card, bands, raster_name=f"'{path.name}'")
            regions = RegionFilter.create(extent, mask_geometries, dataset.bounds)
            _warn_about_georeference(dataset)
            plan = _plan(dataset, card, resample_to_model_gsd)
            plan.check(f"'{path.name}'")
            return cls(dataset, card, band_indexes, regions, plan, value_scaling, mirror_depth_px)
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

    def check_unchanged(self) -> None:
        """Raise if a file of the input was replaced, rewritten or removed since it was opened.

        Raises:
            InvalidRasterError: Naming the file; nothing may then be committed (rows of two versions).
        """
        self._identity.check_unchanged()

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
                f"Reading {_describe(inner)} of '{self.path}' failed ({root_cause(exc)}); the file may be truncated "
                "or corrupt: re-create or re-download it."
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
        if reader is self._reader and self._warped_alpha is not None:
            # The warped view's added alpha band carries every kind of source validity (nodata, NaN nodata,
            # internal masks, the footprint); its bands' own mask flags say "all valid" whatever the source had.
            try:
                alpha = reader.read(self._warped_alpha, window=inner)
            except RasterioError as exc:
                raise InvalidRasterError(
                    f"Reading the mask of '{self.path}' failed ({exc}); is the file complete?"
                ) from exc
            return np.asarray(alpha > 0, dtype=bool)
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
                f"Reading the mask of {_describe(inner)} of '{self.path}' failed ({root_cause(exc)}); is the file "
                "complete?"
            ) from exc
        # With nodata values a pixel is invalid only where every band is nodata (GDAL's dataset-mask rule).
        return np.asarray((masks > 0).any(axis=0), dtype=bool)


def _describe(window: Window) -> str:
    """A window in words (rasterio's repr is not for users)."""
    return (
        f"rows {int(window.row_off)}-{int(window.row_off + window.height) - 1}, "
        f"columns {int(window.col_off)}-{int(window.col_off + window.width) - 1}"
    )


def _check_sources_exist(dataset: DatasetReader, path: Path) -> None:
    """A VRT (or another multi-file raster) whose source file is missing opens fine but fails on the first read.

    Raises:
        InvalidRasterError: Naming the missing file.
    """
    for name in dataset.files[1:]:
        if name.startswith("/vsi") or "://" in name or name.lower().endswith((".aux.xml", ".ovr")):
            continue
        if not Path(name).exists():
            raise InvalidRasterError(
                f"Input raster '{path}' refers to '{name}', which does not exist; restore that file or fix the "
                f"paths in '{path.name}'."
            )


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


def _plan(dataset: DatasetReader, card: ModelCard, resample: bool) -> ResolutionPlan:
    """The resolution plan of ``dataset`` for ``card``: its GSD from the pixel vectors, the processing grid."""
    pixel_m = None
    reason = ""
    if not _is_georeferenced(dataset):
        reason = "not georeferenced"
    else:
        pixel_m = pixel_size_m(dataset.crs, dataset.transform, dataset.width, dataset.height)
        if pixel_m is None:
            reason = "its CRS has no usable units"
    per_unit = metres_per_unit(dataset.crs, dataset.transform)
    lattice = None if per_unit is None or not SNAP_PROCESSING_GRID else (dataset.transform, per_unit)
    return plan_resolution(dataset.width, dataset.height, pixel_m, card.gsd_m, resample, reason, lattice)


def _warped_reader(dataset: DatasetReader, transform: Affine, height: int, width: int) -> tuple[WarpedVRT, int | None]:
    """The view of ``dataset`` on the processing grid, and the band index of the alpha band it adds (or None)."""
    downsampling = width < dataset.width or height < dataset.height
    has_alpha = any(ci.name == "alpha" for ci in dataset.colorinterp)
    # An alpha band on the warped view carries every kind of source validity (nodata, internal mask,
    # outside the footprint); a source alpha band already plays that role and is warped as one.
    vrt = WarpedVRT(
        dataset,
        crs=dataset.crs,
        transform=transform,
        height=height,
        width=width,
        resampling=Resampling.average if downsampling else Resampling.bilinear,
        add_alpha=not has_alpha,
    )
    return vrt, None if has_alpha else vrt.count


def _warn_about_georeference(dataset: DatasetReader) -> None:
    name = Path(dataset.name).name
    if _is_georeferenced(dataset):
        return
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


def raster_gsd_m(dataset: DatasetReader) -> float | None:
    """A raster's pixel size in metres as the pipeline sees it (None without georeference or metric units).

    The one GSD rule for every reader of input rasters (the pipeline, training chips and model cards): the mean
    length of the two pixel vectors (:func:`engine.raster.resolution.pixel_size_m`).
    """
    if not _is_georeferenced(dataset):
        return None
    steps = pixel_size_m(dataset.crs, dataset.transform, dataset.width, dataset.height)
    return None if steps is None else float((steps[0] + steps[1]) / 2.0)
