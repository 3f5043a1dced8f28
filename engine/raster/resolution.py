"""Ground sampling distance and the processing grid: how far the raster's resolution is from the model's.

The GSD of a pixel is the length of its two pixel vectors (the columns ``(a, d)`` and rows ``(b, e)`` of the
geotransform), in metres: a rotated or sheared raster has the GSD of its north-up twin. In a projected CRS the
lengths are converted with the CRS's linear unit; in a geographic CRS with the metres per degree of longitude and
of latitude at the raster's centre (WGS 84 ellipsoid series; other datums differ by far less than the 5 %
tolerance). Projections that distort distances (Web Mercator far from the equator) are taken at their nominal
metres.

:func:`plan_resolution` decides the processing grid: the input grid itself, or the same bounds at the model's
GSD (each axis on its own, so the model gets square pixels in metres). For a north-up raster in a projected CRS
the grid is put on the lattice of the model's GSD in the CRS instead (:func:`lattice_grid`: cells of exactly that
size, origin on a multiple of it, covering the raster by less than a cell more on each side), so two rasters of the
same imagery cut at different places are resampled onto the same cells; rotated, sheared, geographic or
unreferenced rasters keep the same-bounds grid. It refuses a resampling that would
multiply the pixel count by more than :data:`MAX_UPSAMPLING_PIXELS`, and :meth:`ResolutionPlan.message` states the
resolutions and the grid, as a warning when they are more than :data:`WARN_FACTOR` apart either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from ..errors import InvalidRasterError

__all__ = [
    "GSD_TOLERANCE",
    "MAX_UPSAMPLING_PIXELS",
    "WARN_FACTOR",
    "ResolutionPlan",
    "lattice_grid",
    "metres_per_degree",
    "metres_per_unit",
    "pixel_size_m",
    "plan_resolution",
]

#: Relative GSD difference above which tiles are resampled to the model's resolution.
GSD_TOLERANCE = 0.05
#: Resolutions further apart than this factor, either way, are warned about.
WARN_FACTOR = 4.0
#: Resampling may multiply the pixel count by at most this much (a factor of 4 in resolution).
MAX_UPSAMPLING_PIXELS = 16.0


def metres_per_degree(latitude_deg: float) -> tuple[float, float]:
    """(metres per degree of longitude, metres per degree of latitude) at a latitude, on the WGS 84 ellipsoid."""
    phi = math.radians(latitude_deg)
    along_meridian = 111_132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi) - 0.0023 * math.cos(6 * phi)
    along_parallel = 111_412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi) + 0.118 * math.cos(5 * phi)
    return along_parallel, along_meridian


def pixel_size_m(crs: CRS | None, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """(column step, row step) of a pixel in metres: the lengths of its pixel vectors; None where unknown.

    Args:
        crs: The raster's CRS (None: no georeference).
        transform: Its geotransform (rotation and shear allowed).
        width: Columns, to find the raster's centre in a geographic CRS.
        height: Rows.
    """
    if crs is None or transform == Affine.identity():
        return None
    try:
        if crs.is_geographic:
            _, radians_per_unit = crs.units_factor
            degrees_per_unit = math.degrees(radians_per_unit)
            _, latitude = transform * (width / 2.0, height / 2.0)
            latitude *= degrees_per_unit
            if not -90.0 <= latitude <= 90.0:
                return None
            per_lon, per_lat = metres_per_degree(latitude)
            x_m, y_m = per_lon * degrees_per_unit, per_lat * degrees_per_unit
            column = math.hypot(transform.a * x_m, transform.d * y_m)
            row = math.hypot(transform.b * x_m, transform.e * y_m)
        elif crs.is_projected:
            _, metres_per_unit = crs.linear_units_factor
            column = math.hypot(transform.a, transform.d) * metres_per_unit
            row = math.hypot(transform.b, transform.e) * metres_per_unit
        else:
            return None
    except (CRSError, ValueError):  # exotic CRS definitions without usable units: the GSD is unknown
        return None
    if not (math.isfinite(column) and math.isfinite(row)) or column <= 0 or row <= 0:
        return None
    return column, row


@dataclass(frozen=True)
class ResolutionPlan:
    """The input's and the model's resolution and the grid the model runs on.

    Attributes:
        input_width_px: Columns of the input grid.
        input_height_px: Rows of the input grid.
        input_pixel_m: (column, row) pixel size of the input in metres; None where unknown.
        model_gsd_m: The card's GSD; None where the card does not say.
        resample_requested: Whether the run may resample to the model's GSD.
        width_px: Columns of the processing grid.
        height_px: Rows of the processing grid.
        unknown_reason: Why the input's GSD is unknown ("" where it is known).
        grid_transform: The processing grid's transform when it lies on the CRS lattice of the model's GSD
            (:func:`lattice_grid`); None for the same-bounds grid (or no resampling).
    """

    input_width_px: int
    input_height_px: int
    input_pixel_m: tuple[float, float] | None
    model_gsd_m: float | None
    resample_requested: bool
    width_px: int
    height_px: int
    unknown_reason: str = ""
    grid_transform: Affine | None = None

    @property
    def resampled(self) -> bool:
        """Whether the processing grid differs from the input grid."""
        sized = (self.width_px, self.height_px) != (self.input_width_px, self.input_height_px)
        return sized or self.grid_transform is not None

    @property
    def input_gsd_m(self) -> float | None:
        """The input's GSD in metres (mean of the two pixel vectors), None where unknown."""
        return None if self.input_pixel_m is None else (self.input_pixel_m[0] + self.input_pixel_m[1]) / 2.0

    @property
    def factor(self) -> float | None:
        """Input GSD over model GSD (> 1: the input is coarser); None where either is unknown."""
        if self.input_gsd_m is None or self.model_gsd_m is None:
            return None
        return self.input_gsd_m / self.model_gsd_m

    @property
    def pixel_factor(self) -> float:
        """Processing-grid pixels per input pixel."""
        return (self.width_px * self.height_px) / (self.input_width_px * self.input_height_px)

    def transform(self, input_transform: Affine) -> Affine:
        """The processing grid's transform: on the CRS lattice, or the input's bounds at the grid's size."""
        if self.grid_transform is not None:
            return self.grid_transform
        if not self.resampled:
            return input_transform
        return input_transform * Affine.scale(
            self.input_width_px / self.width_px, self.input_height_px / self.height_px
        )

    def check(self, raster_name: str) -> None:
        """Refuse a resampling that would multiply the pixel count by more than :data:`MAX_UPSAMPLING_PIXELS`.

        Raises:
            InvalidRasterError: Naming both resolutions, the grid sizes and the two ways out.
        """
        if not self.resampled or self.pixel_factor <= MAX_UPSAMPLING_PIXELS:
            return
        raise InvalidRasterError(
            f"{raster_name} has {_m(self.input_gsd_m)} pixels but the model was trained on {_m(self.model_gsd_m)} "
            f"imagery: resampling would multiply the pixel count by {self.pixel_factor:,.0f} (a {self.width_px:,} x "
            f"{self.height_px:,} px processing grid from {self.input_width_px:,} x {self.input_height_px:,} px) and "
            f"add no detail. Use a model made for about {_m(self.input_gsd_m)} imagery, or RESAMPLE false to "
            "run at the raster's own resolution."
        )

    def message(self, raster_name: str) -> tuple[str, bool]:
        """The one line stating the resolutions and the grid, and whether it is a warning."""
        grid = f"{self.width_px:,} x {self.height_px:,}"
        input_grid = f"{self.input_width_px:,} x {self.input_height_px:,} px"
        factor = self.factor
        if factor is None:
            what = f"input {_m(self.input_gsd_m)}" if self.input_gsd_m is not None else self._unknown_input()
            model = f"model {_m(self.model_gsd_m)}" if self.model_gsd_m is not None else "model resolution unknown"
            return f"Resolution of {raster_name}: {what}, {model}: processing the input grid, {grid} px.", False
        head = f"Resolution of {raster_name}: input {_m(self.input_gsd_m)}, model {_m(self.model_gsd_m)}"
        far = factor > WARN_FACTOR or factor < 1.0 / WARN_FACTOR
        if self.resampled:
            if far and factor < 1.0:
                return (
                    f"{head}: downsampled {1 / factor:.3g}x to a {grid} px processing grid (input {input_grid}), so "
                    f"the model sees {grid} pixels and detail finer than {_m(self.model_gsd_m)} is lost. For the full "
                    f"detail use a model made for about {_m(self.input_gsd_m)} imagery, or RESAMPLE false (the "
                    f"model then sees objects {1 / factor:.3g}x larger than in training)."
                ), True
            if far:
                return (
                    f"{head}: upsampled {factor:.3g}x to a {grid} px processing grid (input {input_grid}); the model "
                    "sees no more detail than the input has. A model made for this resolution will do better."
                ), True
            return f"{head}: resampled to a {grid} px processing grid (input {input_grid}).", False
        if self.resample_requested or self.input_pixel_m is None or self.model_gsd_m is None:
            return f"{head}: processing the input grid, {grid} px.", False
        if not far:
            return f"{head}, RESAMPLE false: processing the input grid at its own resolution, {grid} px.", False
        size, ratio = ("larger", 1 / factor) if factor < 1.0 else ("smaller", factor)
        return (
            f"{head}, RESAMPLE false: the model sees the {grid} px input grid with objects {ratio:.3g}x {size} "
            f"than in the {_m(self.model_gsd_m)} imagery it was trained on; expect poor results. Use "
            f"RESAMPLE true to resample, or a model made for about {_m(self.input_gsd_m)} imagery."
        ), True

    def _unknown_input(self) -> str:
        reason = f" ({self.unknown_reason})" if self.unknown_reason else ""
        return f"input resolution unknown{reason}"


def plan_resolution(
    input_width_px: int,
    input_height_px: int,
    input_pixel_m: tuple[float, float] | None,
    model_gsd_m: float | None,
    resample: bool,
    unknown_reason: str = "",
    lattice: tuple[Affine, float] | None = None,
) -> ResolutionPlan:
    """The processing grid: the input grid, or its bounds at the model's GSD when the two differ.

    Args:
        input_width_px: Columns of the input.
        input_height_px: Rows of the input.
        input_pixel_m: (column, row) pixel size in metres (see :func:`pixel_size_m`), None where unknown.
        model_gsd_m: The card's GSD, None where unknown.
        resample: Whether resampling is allowed (``--no-resample`` / RESAMPLE false turn it off).
        unknown_reason: Why the input's GSD is unknown, for the message.
        lattice: ``(input transform, metres per CRS unit)`` of a north-up raster in a projected CRS: a resampled
            grid then lies on the CRS lattice of the model's GSD (:func:`lattice_grid`); None: the same bounds.
    """
    width, height = input_width_px, input_height_px
    grid_transform = None
    if (
        resample
        and input_pixel_m is not None
        and model_gsd_m is not None
        and _needs_resampling(input_pixel_m, model_gsd_m)
    ):
        if lattice is not None:
            input_transform, metres_per_unit = lattice
            cell = model_gsd_m / metres_per_unit
            grid_transform, height, width = lattice_grid(input_transform, input_height_px, input_width_px, cell)
        else:
            width = max(1, round(input_width_px * input_pixel_m[0] / model_gsd_m))
            height = max(1, round(input_height_px * input_pixel_m[1] / model_gsd_m))
    return ResolutionPlan(
        input_width_px=input_width_px,
        input_height_px=input_height_px,
        input_pixel_m=input_pixel_m,
        model_gsd_m=model_gsd_m,
        resample_requested=resample,
        width_px=width,
        height_px=height,
        unknown_reason=unknown_reason,
        grid_transform=grid_transform,
    )


#: Coordinates within this many cells of a lattice line count as on it (float noise in geotransforms).
_LATTICE_EPS = 1e-6


def lattice_grid(transform: Affine, height: int, width: int, cell: float) -> tuple[Affine, int, int]:
    """The smallest grid of ``cell``-sized cells on the CRS lattice ``k * cell`` covering a north-up raster.

    Its origin is the raster's outer corner rounded outwards to a multiple of ``cell`` and its size is rounded up,
    so it covers the raster (by less than one cell more on each side). Two rasters of the same imagery cut at
    different places get grids that share their cells, whatever their extents.

    Args:
        transform: The raster's north-up geotransform (``b == d == 0``).
        height: Its rows.
        width: Its columns.
        cell: The lattice's cell size in CRS units.

    Returns:
        ``(transform, height, width)`` of the grid.
    """
    sx, sy = (1.0 if transform.a > 0 else -1.0), (1.0 if transform.e > 0 else -1.0)
    x0, y0 = transform.c, transform.f
    x1, y1 = x0 + transform.a * width, y0 + transform.e * height
    col0 = math.floor(x0 / cell * sx + _LATTICE_EPS)
    row0 = math.floor(y0 / cell * sy + _LATTICE_EPS)
    new_width = max(1, math.ceil(x1 / cell * sx - _LATTICE_EPS) - col0)
    new_height = max(1, math.ceil(y1 / cell * sy - _LATTICE_EPS) - row0)
    grid = Affine(sx * cell, 0.0, col0 * cell * sx, 0.0, sy * cell, row0 * cell * sy)
    return grid, new_height, new_width


def metres_per_unit(crs: CRS | None, transform: Affine) -> float | None:
    """Metres per CRS unit of a north-up raster in a projected CRS; None for any other (no lattice then)."""
    if crs is None or not crs.is_projected or transform.b != 0 or transform.d != 0 or transform == Affine.identity():
        return None
    try:
        _, factor = crs.linear_units_factor
    except (CRSError, ValueError):
        return None
    return float(factor) if math.isfinite(factor) and factor > 0 else None


def _needs_resampling(pixel_m: tuple[float, float], model_gsd_m: float) -> bool:
    return any(abs(size - model_gsd_m) > GSD_TOLERANCE * model_gsd_m for size in pixel_m)


def _m(metres: float | None) -> str:
    """A resolution for messages: ``0.5 m``, ``300 m``, ``12 cm``."""
    if metres is None:
        return "unknown"
    if metres < 0.1:
        return f"{metres * 100:.3g} cm"
    return f"{metres:.3g} m"
