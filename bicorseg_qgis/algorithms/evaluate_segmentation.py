"""``bicorseg:evaluatesegmentation``: score a class raster against a reference raster (``engine.evaluate_rasters``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from ..compat import FILE_BEHAVIOR_FILE, NUMBER_INTEGER
from ..feedback import FeedbackProgress
from ..layer_input import file_backed_path
from .base import BiCoRSegAlgorithm


class EvaluateSegmentationAlgorithm(BiCoRSegAlgorithm):
    """Confusion matrix, per-class IoU/F1, mIoU, OA and kappa of a prediction against a reference raster."""

    PREDICTION = "PREDICTION"
    REFERENCE = "REFERENCE"
    IGNORE_VALUE = "IGNORE_VALUE"
    MODEL = "MODEL"
    OUTPUT = "OUTPUT"
    MIOU = "MIOU"
    MF1 = "MF1"
    OA = "OA"
    KAPPA = "KAPPA"

    def name(self) -> str:
        """Frozen algorithm id (``bicorseg:evaluatesegmentation``)."""
        return "evaluatesegmentation"

    def displayName(self) -> str:
        """Toolbox title."""
        return self.tr("Evaluate segmentation")

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(
            "Compares a land-cover class raster with a reference raster on the same grid and reports the confusion "
            "matrix, per-class IoU, F1, precision and recall, mean IoU, overall accuracy and Cohen's kappa.\n\n"
            "IGNORE_VALUE: reference value that is not scored (e.g. 0 for 'no label'); -1 = none. Prediction "
            "pixels with value 255 (nodata) are never scored.\n"
            "MODEL: optional model file whose card names the classes; otherwise the prediction's class names "
            "(category names) are used, or the class numbers.\n"
            "OUTPUT: report as .html, .json or .csv (by extension)."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare parameters and numeric outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.PREDICTION, self.tr("Predicted class raster")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference class raster")))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.IGNORE_VALUE,
                self.tr("Reference value to ignore (-1 = none)"),
                NUMBER_INTEGER,
                defaultValue=-1,
                minValue=-1,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                self.tr("Model file whose card names the classes (optional)"),
                behavior=FILE_BEHAVIOR_FILE,
                fileFilter=self.tr("Models (*.onnx *.pt *.pth *.ckpt);;All files (*.*)"),
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT,
                self.tr("Evaluation report"),
                self.tr("HTML files (*.html);;JSON files (*.json);;CSV files (*.csv)"),
            )
        )
        for name, label in (
            (self.MIOU, self.tr("Mean IoU")),
            (self.MF1, self.tr("Mean F1")),
            (self.OA, self.tr("Overall accuracy")),
            (self.KAPPA, self.tr("Cohen's kappa")),
        ):
            self.addOutput(QgsProcessingOutputNumber(name, label))

    def required_modules(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[list[str], list[str]]:
        """Reading rasters and counting needs numpy and rasterio only."""
        return ["numpy", "rasterio"], []

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Parameters in, one engine call (read, count, score), the report and the numbers out."""
        from ..engine import evaluate_rasters, write_report

        prediction, reference = (
            self._layer_path(parameters, name, context) for name in (self.PREDICTION, self.REFERENCE)
        )
        ignore = self.parameterAsInt(parameters, self.IGNORE_VALUE, context)
        model = self.parameterAsFile(parameters, self.MODEL, context).strip()
        result = evaluate_rasters(
            prediction,
            reference,
            ignore_index=None if parameters.get(self.IGNORE_VALUE) in (None, "") or ignore < 0 else ignore,
            model_path=Path(model) if model else None,
            progress=FeedbackProgress(feedback),
        )
        metrics = result.metrics
        output = write_report(metrics, Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context)))
        feedback.pushInfo(
            self.tr("mIoU {miou:.4f}, mF1 {mf1:.4f}, OA {oa:.4f}, kappa {kappa:.4f} over {n} pixels.").format(
                miou=metrics.miou, mf1=metrics.mf1, oa=metrics.oa, kappa=metrics.kappa, n=metrics.pixel_count
            )
        )
        for name, iou, f1 in zip(metrics.class_names, metrics.iou, metrics.f1, strict=True):
            feedback.pushInfo(f"  {name}: IoU {iou:.4f}, F1 {f1:.4f}")
        return {
            self.OUTPUT: str(output),
            self.MIOU: metrics.miou,
            self.MF1: metrics.mf1,
            self.OA: metrics.oa,
            self.KAPPA: metrics.kappa,
        }

    def _layer_path(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> Path:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        path = file_backed_path(layer)
        if path is None:
            raise QgsProcessingException(
                self.tr("{name} must be a raster file on disk (GeoTIFF, VRT...); save layer '{layer}' first.").format(
                    name=name, layer=layer.name()
                )
            )
        return path
