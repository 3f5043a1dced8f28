"""``bicorseg:evaluatesegmentation``: score a class raster against a reference raster, strip by strip."""

from __future__ import annotations

import html
import json
import math
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
from ..layer_input import file_backed_path
from .base import BiCoRSegAlgorithm

STRIP_ROWS = 256
#: Largest class index a UInt8 class raster can hold before its nodata value 255.
MAX_CLASSES = 255


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
        """Accumulate the confusion matrix strip by strip, then report."""
        from ..engine.metrics import SegmentationMetrics

        paths = [self._layer_path(parameters, name, context) for name in (self.PREDICTION, self.REFERENCE)]
        ignore = self.parameterAsInt(parameters, self.IGNORE_VALUE, context)
        ignore_value = None if parameters.get(self.IGNORE_VALUE) in (None, "") or ignore < 0 else ignore
        names = self._class_names(parameters, context, paths[0])
        matrix = _accumulate_confusion(paths[0], paths[1], ignore_value, feedback)
        if matrix is None:
            raise QgsProcessingException(self.tr("Canceled; no output was written."))
        if names is None:
            names = [str(i) for i in range(_used_classes(matrix))]
        elif len(names) < _used_classes(matrix):
            raise QgsProcessingException(
                self.tr(
                    "The rasters hold class {value}, but only {count} class names are known; pick the right MODEL."
                ).format(value=_used_classes(matrix) - 1, count=len(names))
            )
        k = len(names)
        metrics = SegmentationMetrics.from_confusion(matrix[:k, :k], names)
        output = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        _write_report(output, metrics)
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

    def _class_names(
        self, parameters: dict[str, Any], context: QgsProcessingContext, prediction: Path
    ) -> list[str] | None:
        """Class names from the MODEL's card, else the prediction's GDAL category names, else None."""
        from ..engine.model_card import read_card

        model = self.parameterAsFile(parameters, self.MODEL, context).strip()
        if model:
            return list(read_card(model).class_names)
        try:
            from osgeo import gdal
        except ImportError:
            return None
        dataset = gdal.Open(str(prediction))
        # Band.GetCategoryNames() returns None in some GDAL 3.6 builds; gdal.Info's JSON is reliable.
        info = gdal.Info(dataset, format="json") if dataset is not None else {}
        categories = (info.get("bands") or [{}])[0].get("categories")
        if not categories:
            return None
        # GDAL pads the category list up to the largest value with empty names; keep the named prefix.
        named = list(categories[:MAX_CLASSES])
        while named and not named[-1]:
            named.pop()
        return [name or str(i) for i, name in enumerate(named)] or None


def _accumulate_confusion(
    prediction: Path, reference: Path, ignore_value: int | None, feedback: QgsProcessingFeedback
) -> Any:
    """(256, 256) confusion counts of reference (rows) vs prediction (columns); None when canceled."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from ..engine.errors import InvalidRasterError
    from ..engine.metrics import confusion_matrix

    with rasterio.open(prediction) as pred_src, rasterio.open(reference) as ref_src:
        if (pred_src.height, pred_src.width) != (ref_src.height, ref_src.width):
            raise InvalidRasterError(
                f"Prediction is {pred_src.width} x {pred_src.height} pixels but the reference is "
                f"{ref_src.width} x {ref_src.height}; warp the reference onto the prediction's grid first "
                "(e.g. gdal:warpreproject with nearest neighbour)."
            )
        matrix = np.zeros((MAX_CLASSES + 1, MAX_CLASSES + 1), dtype=np.int64)
        pred_nodata, ref_nodata = pred_src.nodata, ref_src.nodata
        for row in range(0, pred_src.height, STRIP_ROWS):
            if feedback.isCanceled():
                return None
            window = Window(0, row, pred_src.width, min(STRIP_ROWS, pred_src.height - row))
            pred = pred_src.read(1, window=window).astype(np.int64)
            target = ref_src.read(1, window=window).astype(np.int64)
            valid = (pred >= 0) & (pred <= MAX_CLASSES)
            if pred_nodata is not None:
                valid &= pred != int(pred_nodata)
            valid &= pred != MAX_CLASSES  # the class raster's nodata (engine.model_card.NODATA_CLASS)
            if ref_nodata is not None and not math.isnan(ref_nodata):
                valid &= target != int(ref_nodata)
            matrix += confusion_matrix(np.where(valid, pred, 0), target, MAX_CLASSES + 1, ignore_value, valid)
            feedback.setProgress(100.0 * (row + window.height) / pred_src.height)
    return matrix


def _used_classes(matrix: Any) -> int:
    """1 + the largest class index that occurs in the reference or the prediction (0 if none)."""
    import numpy as np

    used = np.flatnonzero(matrix.sum(axis=0) + matrix.sum(axis=1))
    return int(used.max()) + 1 if used.size else 0


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _write_report(path: Path, metrics: Any) -> None:
    """Write the report in the format named by the file extension (.json, .csv, else HTML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".json":
        summary = metrics.to_dict()
        for key in ("miou", "mf1", "oa", "kappa"):
            summary[key] = _finite(summary[key])
        for scores in summary["per_class"].values():
            for key in ("iou", "f1", "precision", "recall"):
                scores[key] = _finite(scores[key])
        path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return
    if suffix == ".csv":
        lines = ["class_index,class_name,iou,f1,precision,recall,support_px"]
        for i, name in enumerate(metrics.class_names):
            lines.append(
                f"{i},{name},{metrics.iou[i]:.6f},{metrics.f1[i]:.6f},{metrics.precision[i]:.6f},"
                f"{metrics.recall[i]:.6f},{metrics.support_px[i]}"
            )
        lines.append(f"mean,,{metrics.miou:.6f},{metrics.mf1:.6f},,,{metrics.pixel_count}")
        lines.append(f"overall_accuracy,,{metrics.oa:.6f},,,,")
        lines.append(f"kappa,,{metrics.kappa:.6f},,,,")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return
    path.write_text(_html_report(metrics), encoding="utf-8")


def _html_report(metrics: Any) -> str:
    names = [html.escape(n) for n in metrics.class_names]
    rows = "".join(
        f"<tr><td>{name}</td><td>{metrics.iou[i]:.4f}</td><td>{metrics.f1[i]:.4f}</td>"
        f"<td>{metrics.precision[i]:.4f}</td><td>{metrics.recall[i]:.4f}</td><td>{metrics.support_px[i]}</td></tr>"
        for i, name in enumerate(names)
    )
    header = "".join(f"<th>{n}</th>" for n in names)
    matrix = "".join(
        f"<tr><th>{names[i]}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for i, row in enumerate(metrics.confusion.tolist())
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Segmentation evaluation</title></head><body>"
        "<h1>Segmentation evaluation</h1>"
        f"<p>mIoU {metrics.miou:.4f} &middot; mF1 {metrics.mf1:.4f} &middot; overall accuracy {metrics.oa:.4f} "
        f"&middot; kappa {metrics.kappa:.4f} &middot; {metrics.pixel_count} pixels scored</p>"
        "<table border='1'><tr><th>class</th><th>IoU</th><th>F1</th><th>precision</th><th>recall</th>"
        f"<th>reference pixels</th></tr>{rows}</table>"
        "<h2>Confusion matrix (rows: reference, columns: prediction)</h2>"
        f"<table border='1'><tr><th></th>{header}</tr>{matrix}</table></body></html>"
    )
