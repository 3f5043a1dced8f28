"""``bicorseg:trainmodel``: fine-tune (or train from scratch) on labelled layers; ONNX model + HTML report out.

Thin: reads the QGIS layers (labels reprojected to the raster's CRS, and said), hands plain label data to the
training package (``bicorseg_qgis.training``, imported lazily here and only after torch was found) and adds the
outputs. Processing runs it in its background thread, so QGIS stays responsive; the log shows every optimizer step
and every validation's per-class IoU, and Cancel stops after the current step without writing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
)

from ..compat import FILE_BEHAVIOR_FILE, NUMBER_DOUBLE, NUMBER_INTEGER, POLYGON_SOURCE, mark_advanced
from ..feedback import FeedbackProgress, engine_messages_to_feedback
from ..layer_input import raster_input
from .training_inputs import TrainingAlgorithm, add_labelled_raster_parameters, optional_polygons, training_labels

DEVICES = ("auto", "cpu", "cuda")
#: ARCHITECTURE's static strings: fine-tune BASE_MODEL (or the bundled model), or train one of these from scratch.
#: The same names as ``training.finetune.ARCHITECTURES`` (a test checks), spelled out here so that the dialog
#: builds without torch.
FROM_BASE_MODEL = "base_model"
ARCHITECTURES = (FROM_BASE_MODEL, "bicorseg_small", "hi_resnet_small", "bicorseg", "hi_resnet")
#: What training needs in QGIS's Python (the installer's 'training' profile brings all of it).
TRAINING_MODULES = ["numpy", "rasterio", "torch", "onnx", "onnxruntime", "yaml", "PIL", "matplotlib", "tqdm"]


class TrainModelAlgorithm(TrainingAlgorithm):
    """Fine-tune a land-cover model on the user's own labels (frozen public interface)."""

    DEPENDENCY_PROFILE = "training"

    INPUT = "INPUT"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    VALIDATION = "VALIDATION"
    LABELED_AREA = "LABELED_AREA"
    BACKGROUND_CLASS = "BACKGROUND_CLASS"
    BASE_MODEL = "BASE_MODEL"
    ARCHITECTURE = "ARCHITECTURE"
    MINUTES = "MINUTES"
    TILE_SIZE = "TILE_SIZE"
    DEVICE = "DEVICE"
    SEGMENT_INPUT = "SEGMENT_INPUT"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    REPORT = "REPORT"
    OUTPUT = "OUTPUT"
    VAL_MIOU = "VAL_MIOU"
    BASELINE_VAL_MIOU = "BASELINE_VAL_MIOU"
    STEPS = "STEPS"

    def name(self) -> str:
        """Frozen algorithm id (``bicorseg:trainmodel``)."""
        return "trainmodel"

    def displayName(self) -> str:
        """Toolbox title."""
        return self.tr("Train model on labelled layers")

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(
            "Fine-tunes a land-cover model on polygons you digitised over your own raster (or on a class raster), "
            "on the CPU or a GPU, within a time budget, and writes an ONNX model that 'Segment land cover' runs as "
            "MODEL, plus an HTML report (loss and IoU curves, confusion matrix).\n\n"
            "LABELS: polygons with a class field (text or integer) or a class raster. Pixels outside every polygon "
            "are ignored, so sparse digitising is fine; inside LABELED_AREA polygons unlabelled pixels are "
            "BACKGROUND_CLASS (default 'background'). Class names and colours come from the layer's categorised "
            "style when it has one.\n"
            "VALIDATION: polygons with the class field (validation labels) or without it (areas whose labels "
            "validate); empty holds out a spatially separate 20 % of the labels automatically.\n"
            "BASE_MODEL: the model to fine-tune (empty = the bundled model); classes it does not know get a new "
            "classifier, its encoder keeps its weights. ARCHITECTURE: train that architecture from scratch instead.\n"
            "MINUTES: training time budget. Needs PyTorch: Set-up > Install dependencies, profile 'training'."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the frozen parameters (names, types and enum strings are a public interface)."""
        add_labelled_raster_parameters(self)
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.VALIDATION, self.tr("Validation polygons (empty = hold out 20 % automatically)"),
                [POLYGON_SOURCE], optional=True,
            )
        )  # fmt: skip
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterFeatureSource(
                    self.LABELED_AREA, self.tr("Completely labelled areas (unlabelled pixels inside = background)"),
                    [POLYGON_SOURCE], optional=True,
                )
            )
        )  # fmt: skip
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterString(
                    self.BACKGROUND_CLASS, self.tr("Background class (inside the labelled areas)"), optional=True
                )
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.BASE_MODEL,
                self.tr("Base model to fine-tune (.onnx or PyTorch checkpoint; empty = bundled model)"),
                behavior=FILE_BEHAVIOR_FILE,
                fileFilter=self.tr("Models (*.onnx *.pt *.pth *.ckpt);;All files (*.*)"),
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.ARCHITECTURE, self.tr("Architecture (base_model = fine-tune; others train from scratch)"),
                options=list(ARCHITECTURES), defaultValue=FROM_BASE_MODEL, usesStaticStrings=True,
            )
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MINUTES, self.tr("Training time budget (minutes)"), NUMBER_DOUBLE, defaultValue=20.0,
                minValue=0.01,
            )
        )  # fmt: skip
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterNumber(
                    self.TILE_SIZE, self.tr("Tile size in pixels"), NUMBER_INTEGER, defaultValue=256, minValue=32
                )
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DEVICE, self.tr("Device"), options=list(DEVICES), defaultValue="auto", usesStaticStrings=True
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.SEGMENT_INPUT, self.tr("Segment the input raster with the new model"), defaultValue=False
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_MODEL, self.tr("Trained model"), fileFilter=self.tr("ONNX models (*.onnx)")
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.REPORT, self.tr("Training report"), fileFilter=self.tr("HTML files (*.html)")
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT, self.tr("Land cover (with SEGMENT_INPUT)"), optional=True, createByDefault=False
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.VAL_MIOU, self.tr("Validation mIoU of the trained model")))
        self.addOutput(QgsProcessingOutputNumber(self.BASELINE_VAL_MIOU, self.tr("Validation mIoU before training")))
        self.addOutput(QgsProcessingOutputNumber(self.STEPS, self.tr("Optimizer steps")))

    def required_modules(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[list[str], list[str]]:
        """Everything training needs (the installer's 'training' profile)."""
        return list(TRAINING_MODULES), []

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Read the layers, train (in this background thread), and optionally segment the input with the result."""
        from ..training import ChipRequest, FinetuneRequest, run_finetune

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        architecture = self.parameterAsEnumString(parameters, self.ARCHITECTURE, context) or FROM_BASE_MODEL
        base_text = self.parameterAsFile(parameters, self.BASE_MODEL, context).strip()
        if base_text and not Path(base_text).is_file():
            raise QgsProcessingException(
                self.tr("BASE_MODEL '{path}' does not exist; choose a model file or leave it empty.").format(
                    path=base_text
                )
            )
        if base_text and architecture != FROM_BASE_MODEL:
            raise QgsProcessingException(
                self.tr(
                    "Give BASE_MODEL (fine-tune it) or an ARCHITECTURE to train from scratch, not both; set "
                    "ARCHITECTURE to base_model or clear BASE_MODEL."
                )
            )
        labels = training_labels(self, parameters, context, feedback, layer)
        field = (self.parameterAsString(parameters, self.CLASS_FIELD, context) or "").strip()
        validation = optional_polygons(self, parameters, self.VALIDATION, field, context, feedback, layer)
        labeled_area = optional_polygons(self, parameters, self.LABELED_AREA, "", context, feedback, layer)
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        output_model = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context))
        report = Path(self.parameterAsFileOutput(parameters, self.REPORT, context))
        segment = self.parameterAsBoolean(parameters, self.SEGMENT_INPUT, context)
        source = raster_input(layer, None, None, context, feedback, FeedbackProgress(feedback, 0.0, 0.0))
        progress = FeedbackProgress(feedback, 0.0, 90.0 if segment else 100.0)
        try:
            request = FinetuneRequest(
                chips=ChipRequest(
                    raster=source.path,
                    labels=labels,
                    tile_size_px=tile,
                    overlap_px=tile // 8,
                    validation=validation,
                    labeled_area=labeled_area,
                    background_class=self.parameterAsString(parameters, self.BACKGROUND_CLASS, context) or None,
                ),
                output_model=output_model,
                report=report,
                base_model=Path(base_text) if base_text and architecture == FROM_BASE_MODEL else None,
                architecture=None if architecture == FROM_BASE_MODEL else architecture,
                minutes=self.parameterAsDouble(parameters, self.MINUTES, context),
                device=self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto",
            )
            # The training package reports through logging, like the engine: its messages reach this run's log.
            with engine_messages_to_feedback(feedback, run_finetune.__module__.rsplit(".", 1)[0]):
                result = run_finetune(request, progress)
            outputs: dict[str, Any] = {
                self.OUTPUT_MODEL: str(result.model_path),
                self.REPORT: str(result.report_path),
                self.OUTPUT: None,
                self.VAL_MIOU: float(result.best.get("val_miou", float("nan"))),
                self.BASELINE_VAL_MIOU: float(result.baseline.get("val_miou", float("nan"))),
                self.STEPS: result.steps,
            }
            feedback.pushInfo(
                self.tr("Validation mIoU {before:.3f} before training, {after:.3f} after {steps} steps; model {path}")
                .format(before=outputs[self.BASELINE_VAL_MIOU], after=outputs[self.VAL_MIOU], steps=result.steps,
                        path=result.model_path)
            )  # fmt: skip
            if segment:
                outputs[self.OUTPUT] = self._segment(parameters, context, feedback, layer, source.path, result)
        finally:
            if source.rendered:
                source.path.unlink(missing_ok=True)
        return outputs

    def _segment(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
        layer: QgsRasterLayer,
        raster: Path,
        result: Any,
    ) -> str:
        """Segment the input with the new model, exactly as Segment land cover does, and style the result."""
        from ..engine import CanceledError, SegmentationRequest, segment_raster
        from .segment_land_cover import SegmentLandCoverAlgorithm

        text = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        output = Path(text) if text else Path(QgsProcessingUtils.generateTempFilename("land_cover.tif"))
        if output.suffix.lower() not in (".tif", ".tiff"):
            raise QgsProcessingException(
                self.tr("Output '{path}' must be a GeoTIFF (.tif); change its file extension.").format(path=output)
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        request = SegmentationRequest(input_path=raster, output_path=output, model_path=result.model_path,
                                      device=self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto")  # fmt: skip
        try:
            segmented = segment_raster(request, progress=FeedbackProgress(feedback, 90.0, 10.0))
        except CanceledError:
            # Cancel means nothing is written: the model and report of this run go too.
            Path(result.model_path).unlink(missing_ok=True)
            Path(result.report_path).unlink(missing_ok=True)
            raise
        SegmentLandCoverAlgorithm().style_outputs(segmented, layer.name(), context, feedback)
        return str(segmented.output_path)
