"""Vector output: the finished class raster as class polygons (class index, class name, area in m²), streamed by GDAL.

Three streaming steps, all in GDAL's own C routines through Debian's GDAL Python bindings (``osgeo``), none of which
holds the raster in memory:

1. **sieve** (only when ``min_area_m2`` > 0): ``GDALSieveFilter`` (4-connected) merges every region smaller than
   ``min_area_m2`` into its largest neighbour, into a temporary GeoTIFF beside the output. Nodata (255) is masked
   out: it is never merged into and never polygonized. The class raster itself is not changed.
2. **polygonize**: ``GDALPolygonize`` (4-connected, nodata masked out) writes each region's polygon into a scratch
   GeoPackage as soon as the region is complete, so memory holds only the regions crossing the current row (plus
   GDAL's per-region bookkeeping, a few bytes per region).
3. **attributes**: one pass over the scratch layer copies every polygon into the destination with ``class_index``,
   ``class_name`` (from the model card) and ``area_m2``, in transactions of :data:`FEATURES_PER_TRANSACTION`.

Areas in square metres: for a projected CRS, the planar area in the CRS (its linear unit converted to metres), so
per class they add up to pixel count x pixel area, as in the class statistics; for a geographic CRS, the area on
the CRS's own ellipsoid, computed in a Lambert azimuthal equal-area projection centred on the raster on that
ellipsoid (equal-area, so exact up to the edges, which are densified to one pixel first so that polygon edges along
parallels keep their curvature); for a raster without CRS, no area (NULL) and a warning.

Rasterio's ``features.shapes`` is not used because it collects every polygon in memory. Debian's ``osgeo`` and the
rasterio wheel each load their own GDAL (3.6 and 3.10 here); they never exchange objects: this module hands GDAL
file paths only, no numpy arrays, so it does not depend on osgeo's numpy ABI either.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, CanceledError, InvalidInputError, OutputPathError
from ..model_card import NODATA_CLASS, ModelCard
from ..progress import NullProgress, ProgressReporter

__all__ = [
    "FEATURES_PER_TRANSACTION",
    "VECTOR_DRIVERS",
    "VectorOutput",
    "VectorStats",
    "check_vector_output",
    "vector_sidecars",
    "write_class_polygons",
]

logger = logging.getLogger(__name__)

#: OGR driver per file extension of the vector output (GeoPackage by default).
VECTOR_DRIVERS: dict[str, str] = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".geojson": "GeoJSON", ".json": "GeoJSON"}
#: Features written per transaction of the attribute pass.
FEATURES_PER_TRANSACTION = 10_000
#: Field names of the polygons.
CLASS_INDEX_FIELD = "class_index"
CLASS_NAME_FIELD = "class_name"
AREA_FIELD = "area_m2"
#: Share of the vector step's progress taken by the sieve and by polygonize; the rest is the attribute pass.
_SIEVE_SHARE = 0.3
_POLYGONIZE_SHARE = 0.4


@dataclass(frozen=True)
class VectorOutput:
    """What a run asks of the vector output.

    Attributes:
        path: Destination (``.gpkg``, ``.fgb``, ``.geojson``); written atomically with the other outputs.
        min_area_m2: Regions smaller than this merge into their largest neighbour before polygonizing (0 = none).
    """

    path: Path
    min_area_m2: float = 0.0

    def __post_init__(self) -> None:
        """Check the minimum area."""
        if not math.isfinite(self.min_area_m2) or self.min_area_m2 < 0:
            raise InvalidInputError(
                f"Minimum area {self.min_area_m2} m² is not valid; give 0 (keep every region) or a positive "
                "number of square metres (MIN_AREA)."
            )


@dataclass(frozen=True)
class VectorStats:
    """What the vector step wrote.

    Attributes:
        feature_count: Polygons written.
        sieve_threshold_px: Regions below this many pixels were merged (0: no sieve).
        area_method: How ``area_m2`` was computed (``planar``, ``ellipsoidal`` or ``none``).
    """

    feature_count: int
    sieve_threshold_px: int
    area_method: str


def _osgeo() -> tuple[Any, Any, Any]:
    """(gdal, ogr, osr) from GDAL's Python bindings, or an error saying how to get them."""
    try:
        from osgeo import gdal, ogr, osr
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The vector output needs GDAL's Python bindings (osgeo), which are not importable ({exc}); install "
            "them (Debian/Ubuntu: apt install python3-gdal; QGIS always has them), or leave VECTOR_OUTPUT "
            "empty."
        ) from exc
    return gdal, ogr, osr


def check_vector_output(path: Path) -> str:
    """Fail before any work if the vector output cannot be written; return its OGR driver name.

    Raises:
        InvalidInputError: For an extension no supported driver writes (the message lists the ones that work).
        BackendUnavailableError: If GDAL's Python bindings are missing.
    """
    driver = VECTOR_DRIVERS.get(Path(path).suffix.lower())
    if driver is None:
        raise InvalidInputError(
            f"Vector output '{path}' has an unsupported extension; use .gpkg (GeoPackage), .fgb (FlatGeobuf) or "
            ".geojson."
        )
    _gdal, ogr, _osr = _osgeo()
    if ogr.GetDriverByName(driver) is None:
        raise BackendUnavailableError(f"This GDAL has no {driver} driver; write a .gpkg instead of '{path}'.")
    return driver


def vector_sidecars(path: Path) -> list[Path]:
    """Files SQLite may leave beside a GeoPackage while it is open (journal, write-ahead log)."""
    return [path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm")]


def write_class_polygons(
    class_raster: Path,
    destination: Path,
    output: VectorOutput,
    card: ModelCard,
    scratch_folder: Path,
    token: str,
    progress: ProgressReporter | None = None,
    temps: list[Path] | None = None,
) -> VectorStats:
    """Polygonize a finished class raster into ``destination`` (a temporary path; the caller moves it into place).

    Args:
        class_raster: UInt8 class raster with nodata 255.
        destination: Vector file to create, in the format of ``output.path``'s extension.
        output: The requested output (its extension picks the format; its minimum area the sieve).
        card: Class names.
        scratch_folder: Where the sieved raster and scratch polygons go (the output's folder).
        token: Unique part of the scratch file names.
        progress: Fractions 0..1 of this step, and cancellation.
        temps: Every scratch path is appended here (the caller deletes them whatever happens).

    Returns:
        What was written.

    Raises:
        CanceledError: If ``progress`` reports a cancel.
        OutputPathError: If GDAL cannot read the raster or write a file (the message has GDAL's reason).
    """
    gdal, ogr, osr = _osgeo()
    reporter = progress if progress is not None else NullProgress()
    scratch = temps if temps is not None else []
    driver_name = check_vector_output(output.path)
    raster = gdal.Open(str(class_raster))
    if raster is None:
        raise OutputPathError(f"GDAL cannot read the class raster '{class_raster}': {gdal.GetLastErrorMsg()}")
    areas = _AreaCalculator(raster, ogr, osr)
    threshold = areas.sieve_threshold_px(output.min_area_m2)
    polygons_path = scratch_folder / f".{output.path.stem}.{token}.polygons.tmp.gpkg"
    scratch.extend([polygons_path, *vector_sidecars(polygons_path)])
    if threshold > 1:
        sieved_path = scratch_folder / f".{output.path.stem}.{token}.sieve.tmp.tif"
        scratch.extend([sieved_path, sieved_path.with_name(sieved_path.name + ".aux.xml")])
        sieved = _sieve(gdal, raster, sieved_path, threshold, _GdalProgress(reporter, 0.0, _SIEVE_SHARE))
        del raster  # GDAL datasets close when their last reference goes
        raster = sieved
    reporter.set_progress(_SIEVE_SHARE)
    polygons = _polygonize(gdal, ogr, raster, areas.srs, polygons_path,
                           _GdalProgress(reporter, _SIEVE_SHARE, _POLYGONIZE_SHARE))  # fmt: skip
    del raster
    count = _write_attributes(ogr, polygons.GetLayer(0), destination, driver_name, output.path.stem, areas, card,
                              reporter)  # fmt: skip
    del polygons
    return VectorStats(feature_count=count, sieve_threshold_px=threshold if threshold > 1 else 0,
                       area_method=areas.method)  # fmt: skip


class _GdalProgress:
    """A GDAL progress callback: reports ``start + span * done``, returns 0 (stop) on a cancel and remembers it."""

    def __init__(self, progress: ProgressReporter, start: float, span: float) -> None:
        self._progress = progress
        self._start = start
        self._span = span
        self.canceled = False

    def __call__(self, done: float, _message: Any = None, _data: Any = None) -> int:
        if self._progress.is_canceled():
            self.canceled = True
            return 0
        self._progress.set_progress(self._start + self._span * min(max(float(done), 0.0), 1.0))
        return 1

    def error(self, gdal: Any, what: str) -> Exception:
        """The error to raise after a GDAL routine stopped: canceled, or failed with GDAL's message."""
        if self.canceled:
            return CanceledError("Segmentation canceled by the user; no output was written.")
        return OutputPathError(
            f"{what} failed ({gdal.GetLastErrorMsg()}); is the disk full? Free space or choose another folder."
        )


def _sieve(gdal: Any, raster: Any, path: Path, threshold: int, callback: _GdalProgress) -> Any:
    """Merge regions below ``threshold`` pixels into their largest neighbour, into a new tiled GeoTIFF."""
    target = gdal.GetDriverByName("GTiff").Create(
        str(path), raster.RasterXSize, raster.RasterYSize, 1, gdal.GDT_Byte,
        options=["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1", "BIGTIFF=IF_SAFER"],
    )  # fmt: skip
    if target is None:
        raise OutputPathError(f"Cannot create '{path}' ({gdal.GetLastErrorMsg()}); choose a writable folder.")
    target.SetGeoTransform(raster.GetGeoTransform())
    target.SetProjection(raster.GetProjection())
    out = target.GetRasterBand(1)
    out.SetNoDataValue(NODATA_CLASS)
    band = raster.GetRasterBand(1)
    if gdal.SieveFilter(band, band.GetMaskBand(), out, threshold, 4, callback=callback) != 0:
        raise callback.error(gdal, f"Sieving the classes into '{path}'")
    target.FlushCache()
    return target


def _polygonize(gdal: Any, ogr: Any, raster: Any, srs: Any, path: Path, callback: _GdalProgress) -> Any:
    """Regions of band 1 (nodata masked out) as 4-connected polygons with field ``class_index``, in a GeoPackage."""
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    if dataset is None:
        raise OutputPathError(f"Cannot create '{path}' ({gdal.GetLastErrorMsg()}); choose a writable folder.")
    layer = dataset.CreateLayer("polygons", srs, ogr.wkbPolygon, options=["SPATIAL_INDEX=NO"])
    layer.CreateField(ogr.FieldDefn(CLASS_INDEX_FIELD, ogr.OFTInteger))
    band = raster.GetRasterBand(1)
    dataset.StartTransaction()  # one transaction: autocommitting each polygon would be very slow
    if gdal.Polygonize(band, band.GetMaskBand(), layer, 0, [], callback=callback) != 0:
        dataset.RollbackTransaction()
        raise callback.error(gdal, f"Polygonizing the classes into '{path}'")
    if dataset.CommitTransaction() != 0:
        raise callback.error(gdal, f"Writing polygons into '{path}'")
    return dataset


def _write_attributes(
    ogr: Any,
    source: Any,
    destination: Path,
    driver_name: str,
    layer_name: str,
    areas: _AreaCalculator,
    card: ModelCard,
    progress: ProgressReporter,
) -> int:
    """Copy the scratch polygons into the destination with class name and area; returns the feature count."""
    dataset = ogr.GetDriverByName(driver_name).CreateDataSource(str(destination))
    if dataset is None:
        raise OutputPathError(f"Cannot create the vector output '{destination}'; choose a writable folder.")
    layer = dataset.CreateLayer(layer_name, areas.srs, ogr.wkbPolygon)
    if layer is None:
        raise OutputPathError(f"Cannot create a polygon layer in '{destination}'.")
    for name, kind in ((CLASS_INDEX_FIELD, ogr.OFTInteger), (CLASS_NAME_FIELD, ogr.OFTString),
                       (AREA_FIELD, ogr.OFTReal)):  # fmt: skip
        layer.CreateField(ogr.FieldDefn(name, kind))
    definition = layer.GetLayerDefn()
    transactions = bool(dataset.TestCapability(ogr.ODsCTransactions))
    total = max(int(source.GetFeatureCount()), 1)
    start = _SIEVE_SHARE + _POLYGONIZE_SHARE
    names = card.class_names
    written = 0
    if transactions:
        dataset.StartTransaction()
    source.ResetReading()
    for polygon in source:
        index = int(polygon.GetField(0))
        geometry = polygon.GetGeometryRef()
        feature = ogr.Feature(definition)
        feature.SetField(CLASS_INDEX_FIELD, index)
        feature.SetField(CLASS_NAME_FIELD, names[index] if 0 <= index < len(names) else f"class {index}")
        area = areas.area_m2(geometry)
        if area is not None:
            feature.SetField(AREA_FIELD, area)
        feature.SetGeometry(geometry)
        if layer.CreateFeature(feature) != 0:
            raise OutputPathError(f"Writing a polygon into '{destination}' failed; is the disk full?")
        written += 1
        if written % FEATURES_PER_TRANSACTION == 0:
            if transactions:
                dataset.CommitTransaction()
                dataset.StartTransaction()
            if progress.is_canceled():
                raise CanceledError("Segmentation canceled by the user; no output was written.")
            progress.set_progress(start + (1.0 - start) * written / total)
    if transactions and dataset.CommitTransaction() != 0:
        raise OutputPathError(f"Writing the polygons into '{destination}' failed; is the disk full?")
    del layer, definition
    dataset.FlushCache()
    del dataset  # closing writes the file (and a GeoPackage's spatial index)
    progress.set_progress(1.0)
    return written


class _AreaCalculator:
    """Areas in square metres of polygons in the raster's CRS (planar, ellipsoidal or none; see the module doc)."""

    def __init__(self, raster: Any, ogr: Any, osr: Any) -> None:
        self.srs: Any = None
        self.method = "none"
        self._ogr = ogr
        self._transform: Any = None
        self._unit_m2 = 1.0
        self._densify = 0.0
        self._gt = tuple(raster.GetGeoTransform())
        self._centre = (raster.RasterXSize / 2.0, raster.RasterYSize / 2.0)
        wkt = raster.GetProjection()
        if not wkt:
            logger.warning("The input has no CRS: polygons are in pixel coordinates and have no area_m2.")
            return
        srs = osr.SpatialReference()
        srs.ImportFromWkt(wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        self.srs = srs
        if srs.IsGeographic():
            x, y = self._map_xy(*self._centre)
            to_degrees = float(srs.GetAngularUnits()) * 180.0 / math.pi
            equal_area = srs.CloneGeogCS()
            equal_area.SetLAEA(y * to_degrees, x * to_degrees, 0.0, 0.0)
            equal_area.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            self._transform = osr.CoordinateTransformation(srs, equal_area)
            gt = self._gt
            self._densify = min(math.hypot(gt[1], gt[4]), math.hypot(gt[2], gt[5]))
            self.method = "ellipsoidal"
        else:
            self._unit_m2 = float(srs.GetLinearUnits()) ** 2
            self.method = "planar"

    def _map_xy(self, col: float, row: float) -> tuple[float, float]:
        gt = self._gt
        return gt[0] + gt[1] * col + gt[2] * row, gt[3] + gt[4] * col + gt[5] * row

    def area_m2(self, geometry: Any) -> float | None:
        """Area of one polygon in m², or None without a CRS."""
        if self.method == "none":
            return None
        if self._transform is None:
            return float(geometry.GetArea()) * self._unit_m2
        projected = geometry.Clone()
        projected.Segmentize(self._densify)
        projected.Transform(self._transform)
        return float(projected.GetArea())

    def pixel_area_m2(self) -> float | None:
        """Area of one pixel (the raster's centre pixel for a geographic CRS), or None without a CRS."""
        ogr = self._ogr
        col, row = math.floor(self._centre[0]), math.floor(self._centre[1])
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1), (0, 0)):
            ring.AddPoint_2D(*self._map_xy(col + dx, row + dy))
        pixel = ogr.Geometry(ogr.wkbPolygon)
        pixel.AddGeometry(ring)
        return self.area_m2(pixel)

    def sieve_threshold_px(self, min_area_m2: float) -> int:
        """Regions with fewer pixels than this are smaller than ``min_area_m2`` (0 or 1: nothing to sieve)."""
        if min_area_m2 <= 0:
            return 0
        pixel = self.pixel_area_m2()
        if pixel is None or pixel <= 0:
            raise InvalidInputError(
                "MIN_AREA needs a georeferenced input (square metres have no meaning on a pixel "
                "grid); set it to 0 or georeference the raster."
            )
        # A region of exactly min_area_m2 is kept: the tolerance absorbs rounding in min_area / pixel area.
        return max(math.ceil(min_area_m2 / pixel - 1e-9), 0)
