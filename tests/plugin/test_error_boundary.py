"""The one error boundary: engine errors become QgsProcessingException with the engine's own message."""

from __future__ import annotations

import pytest
from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

from bicorseg_qgis.algorithms.base import BiCoRSegAlgorithm
from engine import errors

pytestmark = pytest.mark.qgis


def failing_algorithm(error: BaseException) -> BiCoRSegAlgorithm:
    class Failing(BiCoRSegAlgorithm):
        def name(self):
            return "failing"

        def execute(self, parameters, context, feedback):
            raise error

    return Failing()


def process(algorithm):
    return algorithm.processAlgorithm({}, QgsProcessingContext(), QgsProcessingFeedback())


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.InvalidRasterError("Raster 'x.tif' has 2 bands; pick 3 with BANDS."), "pick 3 with BANDS"),
        (errors.BackendUnavailableError("CUDA not usable: install onnxruntime-gpu."), "install onnxruntime-gpu"),
        (errors.CanceledError("stop"), "Canceled; no output was written."),
        (ModuleNotFoundError("No module named 'scipy'", name="scipy"), "package(s) scipy, which are not installed"),
        (MemoryError(), "lower BATCH_SIZE or TILE_SIZE"),
    ],
)
def test_known_errors_become_processing_exceptions_with_a_fix(qgis_app, monkeypatch, error, expected):
    from bicorseg_qgis.algorithms import base

    monkeypatch.setattr(base.platform, "system", lambda: "Linux")
    with pytest.raises(QgsProcessingException) as caught:
        process(failing_algorithm(error))
    assert expected in str(caught.value)


def test_programming_errors_are_not_swallowed(qgis_app):
    with pytest.raises(ZeroDivisionError):
        process(failing_algorithm(ZeroDivisionError("bug")))


def test_a_missing_module_of_the_plugin_itself_is_not_sent_to_pip(qgis_app):
    error = ModuleNotFoundError("No module named 'bicorseg_qgis.engine.nothing'", name="bicorseg_qgis.engine.nothing")
    with pytest.raises(QgsProcessingException) as caught:
        process(failing_algorithm(error))
    assert "pip" not in str(caught.value)
