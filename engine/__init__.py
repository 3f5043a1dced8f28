"""BiCoR-Seg engine: tile any raster, run a segmentation model, stitch and write GeoTIFFs.

Pure Python: never imports QGIS. torch and onnxruntime are imported lazily by the backends, so this package
imports without them. Inside the engine every import is relative, because the QGIS plugin ships this package
as ``bicorseg_qgis.engine``.

Public API, imported on first use so that importing the package stays cheap: ``engine.segment_raster``,
``engine.SegmentationRequest``, ``engine.read_card``, ``engine.evaluate_rasters`` and the other names in ``__all__``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> submodule that defines it
_PUBLIC: dict[str, str] = {
    "SegmentationRequest": "inference.request",
    "SegmentationResult": "inference.request",
    "segment_raster": "inference.pipeline",
    "CHECKPOINT_SUFFIXES": "model_card",
    "ModelCard": "model_card",
    "ModelFile": "model_file",
    "export_checkpoint_file": "export",
    "read_card": "model_card",
    "load_backend": "backends",
    "diagnose": "backends",
    "resolve_model_path": "default_model",
    "ProgressReporter": "progress",
    "BiCoRSegError": "errors",
    "CanceledError": "errors",
    "OutOfMemoryError": "errors",
    "bounded_gdal_cache": "raster.gdal_cache",
    "check_output_paths": "raster.output_paths",
    "EvaluationResult": "evaluation",
    "evaluate_rasters": "evaluation",
    "write_report": "evaluation",
    "VALUE_SCALINGS": "raster.value_scaling",
}

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "VALUE_SCALINGS",
    "BiCoRSegError",
    "CanceledError",
    "EvaluationResult",
    "ModelCard",
    "ModelFile",
    "OutOfMemoryError",
    "ProgressReporter",
    "SegmentationRequest",
    "SegmentationResult",
    "__version__",
    "bounded_gdal_cache",
    "check_output_paths",
    "diagnose",
    "evaluate_rasters",
    "export_checkpoint_file",
    "load_backend",
    "read_card",
    "resolve_model_path",
    "segment_raster",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import public names lazily from their submodules."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'engine' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
