"""``bicorseg:exportmodel``: PyTorch checkpoint with a model card -> ONNX file carrying the same card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..compat import FILE_BEHAVIOR_FILE, NUMBER_INTEGER, mark_advanced
from .base import BiCoRSegAlgorithm


class ExportModelAlgorithm(BiCoRSegAlgorithm):
    """Export a trained checkpoint to ONNX so that it runs with ONNX Runtime alone (no PyTorch needed)."""

    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    OPSET = "OPSET"
    HEATMAPS = "HEATMAPS"
    MODEL_NAME = "MODEL_NAME"

    def name(self) -> str:
        """Frozen algorithm id (``bicorseg:exportmodel``)."""
        return "exportmodel"

    def displayName(self) -> str:
        """Toolbox title."""
        return self.tr("Export model to ONNX")

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(
            "Converts a PyTorch checkpoint saved by the BiCoR-Seg training package (it carries a model card) into an "
            "ONNX file with the same card, usable by 'Segment land cover' with the ONNX Runtime backend and by "
            "the Deepness plugin. Needs PyTorch and onnx."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.INPUT,
                self.tr("PyTorch checkpoint"),
                behavior=FILE_BEHAVIOR_FILE,
                fileFilter=self.tr("PyTorch checkpoints (*.pt *.pth *.ckpt)"),
            )
        )
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterNumber(
                    self.OPSET, self.tr("ONNX opset"), NUMBER_INTEGER, defaultValue=17, minValue=11, maxValue=21
                )
            )
        )
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterBoolean(
                    self.HEATMAPS, self.tr("Also export the model's class heatmaps (BiCoR-Seg)"), defaultValue=False
                )
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("ONNX model"), self.tr("ONNX models (*.onnx)"))
        )
        self.addOutput(QgsProcessingOutputString(self.MODEL_NAME, self.tr("Model name")))

    def required_modules(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[list[str], list[str]]:
        """Exporting needs PyTorch and the onnx package."""
        return ["numpy", "torch", "onnx"], []

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Load the checkpoint, rebuild the model from its card, and export it."""
        from ..engine import export_checkpoint_file

        source = Path(self.parameterAsFile(parameters, self.INPUT, context))
        if not source.is_file():
            raise QgsProcessingException(
                self.tr("Checkpoint '{path}' does not exist; choose the .pt file saved by training.").format(
                    path=source
                )
            )
        output = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        if output.suffix.lower() != ".onnx":
            output = output.with_suffix(".onnx")
        feedback.pushInfo(self.tr("Rebuilding the model from '{path}' and exporting it.").format(path=source.name))
        feedback.setProgress(10)
        written, card, parity = export_checkpoint_file(
            source,
            output,
            opset=self.parameterAsInt(parameters, self.OPSET, context),
            heatmaps=self.parameterAsBool(parameters, self.HEATMAPS, context),
        )
        feedback.pushInfo(
            self.tr(
                "ONNX Runtime agrees with torch: max logit difference {diff:.1e}, arg-max agreement {agree:.4f}."
            ).format(diff=parity["max_abs_diff"], agree=parity["argmax_agreement"])
        )
        feedback.setProgress(100)
        feedback.pushInfo(self.tr("Wrote {path}.").format(path=written))
        return {self.OUTPUT: str(written), self.MODEL_NAME: card.name}
