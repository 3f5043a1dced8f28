"""Processing provider ``bicorseg``: its id, name, icon and the explicit list of algorithms."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms.base import tr
from .algorithms.diagnostics import DiagnosticsAlgorithm
from .algorithms.evaluate_segmentation import EvaluateSegmentationAlgorithm
from .algorithms.export_model import ExportModelAlgorithm
from .algorithms.export_training_data import ExportTrainingDataAlgorithm
from .algorithms.install_dependencies import InstallDependenciesAlgorithm
from .algorithms.segment_land_cover import SegmentLandCoverAlgorithm
from .algorithms.train_model import TrainModelAlgorithm

ICON_PATH = Path(__file__).resolve().parent / "resources" / "icons" / "bicorseg.svg"


class BiCoRSegProvider(QgsProcessingProvider):
    """Provider id ``bicorseg`` (frozen: models, batch files and scripts store it)."""

    def id(self) -> str:
        """Never translated."""
        return "bicorseg"

    def name(self) -> str:
        """Shown in the toolbox."""
        return tr("BiCoR-Seg")

    def longName(self) -> str:
        """Shown in the toolbox tooltip."""
        return tr("BiCoR-Seg land-cover segmentation")

    def icon(self) -> QIcon:
        """The plugin's icon."""
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:
        """Path of the SVG icon."""
        return str(ICON_PATH)

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        """The engine writes GeoTIFF only."""
        return ["tif", "tiff"]

    def supportedOutputVectorLayerExtensions(self) -> list[str]:
        """The formats the engine's vector output writes (GeoPackage first: the default)."""
        return ["gpkg", "fgb", "geojson"]

    def loadAlgorithms(self) -> None:
        """Register every algorithm explicitly (no discovery magic)."""
        for algorithm in (
            SegmentLandCoverAlgorithm(),
            EvaluateSegmentationAlgorithm(),
            ExportModelAlgorithm(),
            DiagnosticsAlgorithm(),
            InstallDependenciesAlgorithm(),
            TrainModelAlgorithm(),
            ExportTrainingDataAlgorithm(),
        ):
            self.addAlgorithm(algorithm)
