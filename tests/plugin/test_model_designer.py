"""A graphical model (.model3) chaining Segment land cover into a native algorithm runs and counts the classes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsProcessingModelAlgorithm

pytestmark = pytest.mark.qgis
MODEL3 = Path(__file__).resolve().parent / "data" / "segment_then_count.model3"


def test_model3_file_chains_segment_into_a_native_algorithm(qgis_app):
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL3))
    assert {child.algorithmId() for child in model.childAlgorithms().values()} == {
        "bicorseg:segmentlandcover",
        "native:rasterlayeruniquevaluesreport",
    }
    valid, problems = model.validate()
    assert valid, problems


def test_model3_runs_and_the_native_step_counts_each_class(tmp_path, rgb_raster, tiny_model, run_alg):
    raster, expected = rgb_raster
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL3))
    table = tmp_path / "counts.csv"
    result = run_alg(
        model, {"input_raster": str(raster), "model_file": str(tiny_model), "count:class_counts": str(table)}
    )
    # QGIS names model outputs "<child id>:<output name>".
    with open(result["count:class_counts"], newline="", encoding="utf-8") as handle:
        counts = {int(float(row["value"])): int(row["count"]) for row in csv.DictReader(handle)}
    expected_counts = np.bincount(expected[expected != 255].ravel(), minlength=3)
    assert counts == {value: int(n) for value, n in enumerate(expected_counts) if n}
