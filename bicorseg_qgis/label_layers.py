"""Read the user's label layers out of QGIS: polygons with a class field (or a class raster), and their style.

Plain data only (GeoJSON geometries, class values, ``(value, name, colour)`` styles): the training algorithms turn it
into the training package's label objects. Polygons are read in the input raster's CRS (QGIS reprojects them, and
the log says so), so the training side never needs QGIS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    NULL,
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsFeatureRequest,
    QgsFeatureSource,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsVectorLayer,
    QgsWkbTypes,
)

from .algorithms.base import tr
from .compat import POLYGON_GEOMETRY
from .layer_input import file_backed_path

#: (class value, class name, ``#rrggbb`` colour) of one category of a layer's style.
Style = tuple[Any, str, str]


@dataclass(frozen=True)
class LayerPolygons:
    """Polygons of one layer in the raster's CRS.

    Attributes:
        features: ``(GeoJSON geometry, class value or None)`` per polygon.
        crs_wkt: The CRS they are in (the raster's); empty without one.
        source: The layer's name.
        class_field: The class field read, empty for area layers.
        styles: The categories of the layer's categorised style on that field, in its order.
    """

    features: tuple[tuple[dict[str, Any], Any], ...]
    crs_wkt: str
    source: str
    class_field: str = ""
    styles: tuple[Style, ...] = ()


@dataclass(frozen=True)
class LayerClassRaster:
    """A class raster label layer: its file, band and paletted style."""

    path: Path
    band: int
    source: str
    styles: tuple[Style, ...] = ()


def plain_value(value: Any) -> Any:
    """A QGIS attribute as a plain Python value (NULL -> None)."""
    if value is None or value == NULL or (hasattr(value, "isNull") and value.isNull()):
        return None
    return value


def read_polygons(
    source: QgsFeatureSource | QgsVectorLayer,
    name: str,
    class_field: str,
    raster_crs: QgsCoordinateReferenceSystem,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
    parameter: str,
) -> LayerPolygons:
    """The polygons of ``source`` in ``raster_crs``, with ``class_field`` values (empty field: plain areas).

    Raises:
        QgsProcessingException: If the layer is not polygons, lacks the field or holds no polygon.
    """
    if QgsWkbTypes.geometryType(source.wkbType()) != POLYGON_GEOMETRY:
        raise QgsProcessingException(
            tr("{parameter} '{name}' must be a polygon layer (or, for LABELS, a class raster).").format(
                parameter=parameter, name=name
            )
        )
    fields = [field.name() for field in source.fields()]
    if class_field and class_field not in fields:
        raise QgsProcessingException(
            tr("{parameter} '{name}' has no field '{field}'; its fields are {fields}: set CLASS_FIELD.").format(
                parameter=parameter, name=name, field=class_field, fields=", ".join(fields) or "-"
            )
        )
    request = QgsFeatureRequest()
    if raster_crs.isValid() and source.sourceCrs().isValid():
        request.setDestinationCrs(raster_crs, context.transformContext())
        if source.sourceCrs() != raster_crs:
            feedback.pushWarning(
                tr("{parameter} '{name}' is in {crs}; reprojected to the raster's {raster}.").format(
                    parameter=parameter, name=name, crs=source.sourceCrs().authid() or source.sourceCrs().description(),
                    raster=raster_crs.authid() or raster_crs.description(),
                )
            )  # fmt: skip
    if not class_field:
        request.setNoAttributes()
    features = []
    for feature in source.getFeatures(request):
        if feedback.isCanceled():
            raise QgsProcessingException(tr("Canceled; no output was written."))
        geometry = feature.geometry()
        if geometry is None or geometry.isEmpty():
            continue
        if QgsWkbTypes.isCurvedType(geometry.wkbType()):
            geometry.convertToStraightSegment()
        value = plain_value(feature.attribute(class_field)) if class_field else None
        if class_field and value is None:
            continue
        features.append((json.loads(geometry.asJson()), value))
    if not features:
        raise QgsProcessingException(
            tr("{parameter} '{name}' holds no polygons{what}; digitise some first.").format(
                parameter=parameter, name=name, what=tr(" with a class") if class_field else ""
            )
        )
    styles: tuple[Style, ...] = ()
    if class_field and isinstance(source, QgsVectorLayer):
        styles = categorised_styles(source, class_field)
    wkt = raster_crs.toWkt() if raster_crs.isValid() else ""
    return LayerPolygons(tuple(features), wkt, name, class_field, styles)


def categorised_styles(layer: QgsVectorLayer, class_field: str) -> tuple[Style, ...]:
    """The categories of the layer's categorised renderer on ``class_field`` (none for other renderers)."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsCategorizedSymbolRenderer) or renderer.classAttribute() != class_field:
        return ()
    styles = []
    for category in renderer.categories():
        value = plain_value(category.value())
        if value is None or value == "" or category.symbol() is None:
            continue  # the "all other values" category
        styles.append((value, category.label() or str(value), category.symbol().color().name()))
    return tuple(styles)


def read_class_raster(layer: QgsRasterLayer) -> LayerClassRaster:
    """A class raster label layer.

    Raises:
        QgsProcessingException: If the layer is not a local file.
    """
    path = file_backed_path(layer)
    if path is None:
        raise QgsProcessingException(
            tr("LABELS raster '{name}' is not a local file; save it as a GeoTIFF first.").format(name=layer.name())
        )
    renderer = layer.renderer()
    styles: tuple[Style, ...] = ()
    band = 1
    if isinstance(renderer, QgsPalettedRasterRenderer):
        band = renderer.band()
        styles = tuple((int(c.value), c.label or str(int(c.value)), c.color.name()) for c in renderer.classes())
    return LayerClassRaster(path, band, layer.name(), styles)
