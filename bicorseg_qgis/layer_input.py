"""Turn any QGIS raster layer into a file the engine can open.

File-backed GDAL layers go to the engine as they are (fast path, no copy). Every other layer (WMS/XYZ web
layers, GDAL datasets that live only in memory, non-GDAL providers such as the virtual raster calculator) is
read through the layer's own data provider, block by block, into a temporary GeoTIFF: at its native
resolution when the provider has one, else at the model's ground sampling distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
    QgsUnitTypes,
)

from .algorithms.base import tr
from .compat import DISTANCE_DEGREES, DISTANCE_METERS, RASTER_SIZE_CAPABILITY, WRITER_SUCCESS
from .feedback import FeedbackProgress

#: Largest grid the plugin renders from a web/in-memory layer (about 1.6 GB of RGBA): beyond, ask for an EXTENT.
MAX_RENDERED_PIXELS = 20_000 * 20_000
#: Pixels across the extent when neither the layer nor the model says which resolution to use.
FALLBACK_WIDTH_PX = 2048
_METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class RasterInput:
    """The file the engine reads, and whether the plugin rendered it (a temporary copy) or it is the source."""

    path: Path
    rendered: bool


def file_backed_path(layer: QgsRasterLayer) -> Path | None:
    """The local file behind a GDAL layer, or None when the layer is not a plain local file."""
    if layer.providerType() != "gdal":
        return None
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or layer.source()
    # A sub-layer of a multi-layer file (GeoPackage raster table, NetCDF variable) needs its full GDAL name.
    if parts.get("layerName") or parts.get("layerId") is not None:
        return None
    candidate = Path(path)
    return candidate if candidate.is_file() else None


def raster_input(
    layer: QgsRasterLayer,
    extent: QgsRectangle | None,
    gsd_m: float | None,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
    progress: FeedbackProgress,
) -> RasterInput:
    """Return the path the engine should open for ``layer``, rendering the layer first when needed.

    Args:
        layer: Any valid raster layer.
        extent: Area to render (layer CRS) for layers that are not files; None = the layer's extent.
        gsd_m: The model's ground sampling distance, used for layers without a native resolution.
        context: Processing context (temporary folder, transform context).
        feedback: The run's feedback (cancel).
        progress: Where the rendering reports its progress.
    """
    path = file_backed_path(layer)
    if path is not None:
        return RasterInput(path=path, rendered=False)
    feedback.pushInfo(
        tr("Layer '{name}' is not a local file ({provider}); reading it through QGIS into a temporary GeoTIFF.").format(
            name=layer.name(), provider=layer.providerType()
        )
    )
    return RasterInput(path=render_layer(layer, extent, gsd_m, context, feedback, progress), rendered=True)


def render_layer(
    layer: QgsRasterLayer,
    extent: QgsRectangle | None,
    gsd_m: float | None,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
    progress: FeedbackProgress,
) -> Path:
    """Write ``layer`` over ``extent`` into a temporary tiled GeoTIFF through its data provider, block by block."""
    provider: QgsRasterDataProvider = layer.dataProvider()
    area = QgsRectangle(layer.extent()) if extent is None or extent.isNull() else layer.extent().intersect(extent)
    if area.isEmpty():
        raise QgsProcessingException(
            tr("EXTENT does not overlap layer '{name}'; pick an area inside it.").format(name=layer.name())
        )
    if _has_native_grid(layer):
        area = _snap_to_layer_grid(area, layer)
    width_px, height_px = _grid_size(layer, area, gsd_m, feedback)
    target = Path(QgsProcessingUtils.generateTempFilename("bicorseg_input.tif"))
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = QgsRasterFileWriter(str(target))
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise QgsProcessingException(tr("Cannot read layer '{name}' through QGIS.").format(name=layer.name()))
    block_feedback = QgsRasterBlockFeedback()
    block_feedback.progressChanged.connect(lambda percent: progress.set_progress(percent / 100.0))
    feedback.canceled.connect(block_feedback.cancel)
    if feedback.isCanceled():
        block_feedback.cancel()
    error = writer.writeRaster(pipe, width_px, height_px, area, layer.crs(), context.transformContext(), block_feedback)
    feedback.canceled.disconnect(block_feedback.cancel)
    if error != WRITER_SUCCESS:
        if target.exists():
            target.unlink()
        if feedback.isCanceled():
            raise QgsProcessingException(tr("Canceled; no output was written."))
        raise QgsProcessingException(
            tr("Reading layer '{name}' through QGIS failed (error {code}); check the layer shows in the map.").format(
                name=layer.name(), code=int(error)
            )
        )
    progress.set_progress(1.0)
    return target


def _grid_size(
    layer: QgsRasterLayer, area: QgsRectangle, gsd_m: float | None, feedback: QgsProcessingFeedback
) -> tuple[int, int]:
    """Pixel size of the rendered grid: native resolution, else the model's GSD, else a fixed width."""
    if _has_native_grid(layer):
        res_x, res_y = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    elif gsd_m is not None:
        res_x = res_y = _metres_to_map_units(gsd_m, layer)
    else:
        res_x = res_y = area.width() / FALLBACK_WIDTH_PX
        feedback.pushWarning(
            tr("Neither the layer nor the model gives a resolution; reading {px} pixels across the extent.").format(
                px=FALLBACK_WIDTH_PX
            )
        )
    width_px = max(1, math.ceil(area.width() / res_x - 1e-6))
    height_px = max(1, math.ceil(area.height() / res_y - 1e-6))
    if width_px * height_px > MAX_RENDERED_PIXELS:
        raise QgsProcessingException(
            tr(
                "Layer '{name}' would be read as {w} x {h} pixels, too large to render; set EXTENT to a smaller area."
            ).format(name=layer.name(), w=width_px, h=height_px)
        )
    return width_px, height_px


def _has_native_grid(layer: QgsRasterLayer) -> bool:
    """Whether the layer has pixels of its own (files, in-memory GDAL) rather than rendering at any scale (web)."""
    return bool(layer.dataProvider().capabilities() & RASTER_SIZE_CAPABILITY) and layer.width() > 0


def _snap_to_layer_grid(area: QgsRectangle, layer: QgsRasterLayer) -> QgsRectangle:
    """Grow ``area`` outwards to whole layer pixels, so rendering copies pixels instead of resampling them."""
    full = layer.extent()
    res_x, res_y = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    col0 = math.floor((area.xMinimum() - full.xMinimum()) / res_x + 1e-9)
    col1 = math.ceil((area.xMaximum() - full.xMinimum()) / res_x - 1e-9)
    row0 = math.floor((full.yMaximum() - area.yMaximum()) / res_y + 1e-9)
    row1 = math.ceil((full.yMaximum() - area.yMinimum()) / res_y - 1e-9)
    return QgsRectangle(
        full.xMinimum() + col0 * res_x,
        full.yMaximum() - row1 * res_y,
        full.xMinimum() + col1 * res_x,
        full.yMaximum() - row0 * res_y,
    )


def _metres_to_map_units(metres: float, layer: QgsRasterLayer) -> float:
    units = layer.crs().mapUnits()
    if units == DISTANCE_DEGREES:
        return metres / _METRES_PER_DEGREE
    return metres * float(QgsUnitTypes.fromUnitToUnitFactor(DISTANCE_METERS, units))
