"""Enum values that moved between QGIS 3.22 and QGIS 3.36+/4 (Qt6): take the scoped form when it exists.

QGIS 3.36 moved many Processing enums into ``Qgis`` as scoped enums (``Qgis.ProcessingSourceType.VectorPolygon``)
and QGIS 4 on Qt6 drops the old unscoped names (``QgsProcessing.TypeVectorPolygon``). Every enum the plugin uses
is resolved here once, so the rest of the code works on both.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    Qgis,
    QgsColorRampShader,
    QgsProcessing,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsRasterFileWriter,
    QgsRasterInterface,
    QgsUnitTypes,
    QgsWkbTypes,
)


def _scoped_or_legacy(scoped: str, member: str, legacy_owner: Any, legacy_name: str) -> Any:
    """``Qgis.<scoped>.<member>`` when this QGIS has it, else ``legacy_owner.<legacy_name>``."""
    scoped_enum = getattr(Qgis, scoped, None)
    if scoped_enum is not None and hasattr(scoped_enum, member):
        return getattr(scoped_enum, member)
    return getattr(legacy_owner, legacy_name)


POLYGON_SOURCE = _scoped_or_legacy("ProcessingSourceType", "VectorPolygon", QgsProcessing, "TypeVectorPolygon")
FLAG_ADVANCED = _scoped_or_legacy(
    "ProcessingParameterFlag", "Advanced", QgsProcessingParameterDefinition, "FlagAdvanced"
)
NUMBER_INTEGER = _scoped_or_legacy("ProcessingNumberParameterType", "Integer", QgsProcessingParameterNumber, "Integer")
NUMBER_DOUBLE = _scoped_or_legacy("ProcessingNumberParameterType", "Double", QgsProcessingParameterNumber, "Double")
FILE_BEHAVIOR_FILE = _scoped_or_legacy("ProcessingFileParameterBehavior", "File", QgsProcessingParameterFile, "File")
RAMP_INTERPOLATED = _scoped_or_legacy("ShaderInterpolationMethod", "Linear", QgsColorRampShader, "Interpolated")


def mark_advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    """Flag a parameter as advanced (collapsed in the dialog) and return it."""
    parameter.setFlags(parameter.flags() | FLAG_ADVANCED)
    return parameter


DISTANCE_DEGREES = _scoped_or_legacy("DistanceUnit", "Degrees", QgsUnitTypes, "DistanceDegrees")
DISTANCE_METERS = _scoped_or_legacy("DistanceUnit", "Meters", QgsUnitTypes, "DistanceMeters")
RASTER_SIZE_CAPABILITY = _scoped_or_legacy("RasterInterfaceCapability", "Size", QgsRasterInterface, "Size")
WRITER_SUCCESS = _scoped_or_legacy("RasterFileWriterResult", "Success", QgsRasterFileWriter, "NoError")
RASTER_SOURCE = _scoped_or_legacy("ProcessingSourceType", "Raster", QgsProcessing, "TypeRaster")
POLYGON_GEOMETRY = _scoped_or_legacy("GeometryType", "Polygon", QgsWkbTypes, "PolygonGeometry")
