"""Regenerate segment_then_count.model3: Segment land cover chained into native:rasterlayeruniquevaluesreport.

Run from the repository root: QT_QPA_PLATFORM=offscreen PYTHONPATH=. .venv/bin/python tests/plugin/data/make_segment_then_count_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
)

HERE = Path(__file__).resolve().parent


def build_model() -> QgsProcessingModelAlgorithm:
    model = QgsProcessingModelAlgorithm("Segment then count classes", "BiCoR-Seg tests")
    for definition in (
        QgsProcessingParameterRasterLayer("input_raster", "Input raster"),
        QgsProcessingParameterFile("model_file", "Model file", optional=True),
    ):
        model.addModelParameter(definition, QgsProcessingModelParameter(definition.name()))

    segment = QgsProcessingModelChildAlgorithm("bicorseg:segmentlandcover")
    segment.setChildId("segment")
    segment.setDescription("Segment land cover")
    segment.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("input_raster")])
    segment.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromModelParameter("model_file")])
    for name, value in (("DEVICE", "auto"), ("BACKEND", "auto"), ("TILE_SIZE", 16), ("OVERLAP", 4), ("BATCH_SIZE", 0)):
        segment.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    model.addChildAlgorithm(segment)

    count = QgsProcessingModelChildAlgorithm("native:rasterlayeruniquevaluesreport")
    count.setChildId("count")
    count.setDescription("Count pixels per class")
    count.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("segment", "OUTPUT")])
    count.addParameterSources("BAND", [QgsProcessingModelChildParameterSource.fromStaticValue(1)])
    table = QgsProcessingModelOutput("class_counts", "Class counts")
    table.setChildId("count")
    table.setChildOutputName("OUTPUT_TABLE")
    count.setModelOutputs({"class_counts": table})
    model.addChildAlgorithm(count)
    return model


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    from bicorseg_qgis.provider import BiCoRSegProvider

    provider = BiCoRSegProvider()  # keep a reference: the registry does not own a Python-made provider
    QgsApplication.processingRegistry().addProvider(provider)
    target = HERE / "segment_then_count.model3"
    if not build_model().toFile(str(target)):
        raise SystemExit(f"could not write {target}")
    sys.stdout.write(f"wrote {target}\n")
