"""``bicorseg:exporttrainingdata``: image/label GeoTIFF chip pairs and a manifest, for training elsewhere.

The same chips ``bicorseg:trainmodel`` trains on and ``python -m training.chips`` writes (training's chip writer,
reached lazily as ``bicorseg_qgis.training``); needs numpy and rasterio only, not torch. Each chip's ``split`` in the
manifest is ``train`` or ``val``: a spatially separate 20 % of the labels is held out, as training does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
)

from ..compat import NUMBER_INTEGER
from ..feedback import FeedbackProgress
from ..layer_input import raster_input
from .training_inputs import TrainingAlgorithm, add_labelled_raster_parameters, training_labels


class ExportTrainingDataAlgorithm(TrainingAlgorithm):
    """Write training chips of a labelled raster (frozen public interface)."""

    DEPENDENCY_PROFILE = "cpu"

    INPUT = "INPUT"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    TRAIN_CHIPS = "TRAIN_CHIPS"
    VAL_CHIPS = "VAL_CHIPS"

    def name(self) -> str:
        """Frozen algorithm id (``bicorseg:exporttrainingdata``)."""
        return "exporttrainingdata"

    def displayName(self) -> str:
        """Toolbox title."""
        return self.tr("Export training data")

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(
            "Cuts the labelled part of a raster into chips for training elsewhere: in OUTPUT_FOLDER, images/<id>.tif "
            "(the raster's bands and values) and labels/<id>.tif (class index per pixel, 255 = no class), listed in "
            "manifest.json with the classes, colours, bands and resolution. LABELS: polygons with CLASS_FIELD, or a "
            "class raster; pixels outside every polygon have no class. A spatially separate 20 % of the labels is "
            "marked as split 'val' in the manifest. The same chips as 'Train model on labelled layers' trains on."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the frozen parameters."""
        add_labelled_raster_parameters(self)
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE_SIZE, self.tr("Chip size in pixels"), NUMBER_INTEGER, defaultValue=256, minValue=16
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.OVERLAP, self.tr("Overlap between chips in pixels"), NUMBER_INTEGER, defaultValue=32, minValue=0
            )
        )
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Chip folder")))
        self.addOutput(QgsProcessingOutputNumber(self.TRAIN_CHIPS, self.tr("Training chips")))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_CHIPS, self.tr("Validation chips")))

    def required_modules(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[list[str], list[str]]:
        """Chips need numpy and rasterio only."""
        return ["numpy", "rasterio"], []

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Read the layers and write the chips."""
        from ..training import ChipRequest, write_chips

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        labels = training_labels(self, parameters, context, feedback, layer)
        folder = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_FOLDER, context))
        source = raster_input(layer, None, None, context, feedback, FeedbackProgress(feedback, 0.0, 10.0))
        try:
            request = ChipRequest(
                raster=source.path,
                labels=labels,
                tile_size_px=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                overlap_px=self.parameterAsInt(parameters, self.OVERLAP, context),
            )
            chips = write_chips(request, folder, FeedbackProgress(feedback, 10.0, 90.0))
        finally:
            if source.rendered:
                source.path.unlink(missing_ok=True)
        for note in chips.notes:
            feedback.pushWarning(note)
        feedback.pushInfo(
            self.tr("{train} training and {val} validation chips of classes {classes} in {folder}; validation: {how}.")
            .format(train=chips.train_chips, val=chips.val_chips, classes=", ".join(chips.scheme.names),
                    folder=folder, how=chips.validation)
        )  # fmt: skip
        return {self.OUTPUT_FOLDER: str(folder), self.TRAIN_CHIPS: chips.train_chips, self.VAL_CHIPS: chips.val_chips}
