"""Evaluation: confusion-matrix metrics, and scoring a prediction class raster against a reference raster.

``evaluate_rasters(prediction, reference, ignore_index=..., model_path=...)`` reads both rasters block by block,
accumulates the confusion matrix and scores it (:class:`SegmentationMetrics`); ``write_report(metrics, path)``
writes the JSON, CSV or HTML report. ``bicorseg:evaluatesegmentation`` and ``python -m engine evaluate`` are both
thin wrappers around these two calls.
"""

from __future__ import annotations

from .category_names import read_category_names
from .metrics import ConfusionMatrixAccumulator, SegmentationMetrics, confusion_matrix
from .raster_evaluation import EvaluationResult, evaluate_rasters
from .report import report_dict, write_report

__all__ = [
    "ConfusionMatrixAccumulator",
    "EvaluationResult",
    "SegmentationMetrics",
    "confusion_matrix",
    "evaluate_rasters",
    "read_category_names",
    "report_dict",
    "write_report",
]
