"""What the training algorithms share: the labelled-raster parameters, their reading, and the toolbox group.

``bicorseg:trainmodel`` and ``bicorseg:exporttrainingdata`` both take INPUT (the raster), LABELS (polygons with
CLASS_FIELD, or a class raster) and CLASS_FIELD, declared once here (:func:`add_labelled_raster_parameters`) and read
into the training package's label objects (:func:`training_labels`, :func:`optional_polygons`); both sit in the
"Training" group (:class:`TrainingAlgorithm`).
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterField,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)

from .. import label_layers
from ..compat import POLYGON_SOURCE, RASTER_SOURCE
from .base import BiCoRSegAlgorithm

__all__ = ["TrainingAlgorithm", "add_labelled_raster_parameters", "optional_polygons", "training_labels"]


class TrainingAlgorithm(BiCoRSegAlgorithm):
    """A Processing algorithm of the "Training" toolbox group."""

    def group(self) -> str:
        """Toolbox group (translated)."""
        return self.tr("Training")

    def groupId(self) -> str:
        """Stable group id."""
        return "training"


def add_labelled_raster_parameters(algorithm: BiCoRSegAlgorithm) -> None:
    """Declare INPUT, LABELS and CLASS_FIELD (frozen names: a public interface) on ``algorithm``."""
    algorithm.addParameter(QgsProcessingParameterRasterLayer("INPUT", algorithm.tr("Input raster layer")))
    algorithm.addParameter(
        QgsProcessingParameterMapLayer(
            "LABELS",
            algorithm.tr("Labels (polygons with a class field, or a class raster)"),
            types=[POLYGON_SOURCE, RASTER_SOURCE],
        )
    )
    algorithm.addParameter(
        QgsProcessingParameterField(
            "CLASS_FIELD", algorithm.tr("Class field of the label polygons"), parentLayerParameterName="LABELS",
            optional=True,
        )
    )  # fmt: skip


def training_labels(
    algorithm: BiCoRSegAlgorithm,
    parameters: dict[str, Any],
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
    raster: QgsRasterLayer,
) -> Any:
    """LABELS (polygons with CLASS_FIELD, or a class raster) as the training package's label object."""
    from ..training import LabelClass, LabelFeature, PolygonLabels, RasterLabels, normalise_value

    layer: QgsMapLayer | None = algorithm.parameterAsLayer(parameters, "LABELS", context)
    if layer is None or not layer.isValid():
        raise QgsProcessingException(
            algorithm.tr("LABELS is not a valid layer; choose a polygon layer or a class raster.")
        )
    field = (algorithm.parameterAsString(parameters, "CLASS_FIELD", context) or "").strip()
    if isinstance(layer, QgsRasterLayer):
        found = label_layers.read_class_raster(layer)
        styles = tuple(LabelClass(v, n, c) for v, n, c in found.styles)
        return RasterLabels(found.path, found.band, found.source, styles)
    if not field:
        raise QgsProcessingException(
            algorithm.tr("CLASS_FIELD is empty; choose the field of LABELS that holds each polygon's class.")
        )
    polygons = label_layers.read_polygons(layer, layer.name(), field, raster.crs(), context, feedback, "LABELS")
    return _as_polygon_labels(polygons, PolygonLabels, LabelFeature, LabelClass, normalise_value)


def _as_polygon_labels(polygons: Any, polygon_labels: Any, feature: Any, label_class: Any, normalise: Any) -> Any:
    field_label = f"Field '{polygons.class_field}' of '{polygons.source}'"
    features = tuple(
        feature(geometry, normalise(value, field_label) if polygons.class_field else None)
        for geometry, value in polygons.features
    )
    styles = tuple(label_class(normalise(v, field_label), n, c) for v, n, c in polygons.styles)
    return polygon_labels(features, polygons.crs_wkt or None, polygons.source, polygons.class_field, styles)


def optional_polygons(
    algorithm: BiCoRSegAlgorithm,
    parameters: dict[str, Any],
    name: str,
    class_field: str,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
    raster: QgsRasterLayer,
) -> Any:
    """An optional polygon parameter as training polygons: with ``class_field`` when the layer has it, else areas."""
    from ..training import LabelClass, LabelFeature, PolygonLabels, normalise_value

    if parameters.get(name) in (None, ""):
        return None
    source = algorithm.parameterAsSource(parameters, name, context)
    if source is None:
        raise QgsProcessingException(algorithm.invalidSourceError(parameters, name))
    has_field = bool(class_field) and class_field in [f.name() for f in source.fields()]
    layer_name = source.sourceName() or name
    polygons = label_layers.read_polygons(source, layer_name, class_field if has_field else "", raster.crs(), context,
                                          feedback, name)  # fmt: skip
    return _as_polygon_labels(polygons, PolygonLabels, LabelFeature, LabelClass, normalise_value)
