"""Without torch and onnxruntime the provider still loads, and the algorithms say how to install them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: blocking a module in sys.modules makes every later `import` of it fail.
SCRIPT = r"""
import json, sys
for name in ("torch", "onnxruntime"):
    sys.modules[name] = None
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback
app = QgsApplication([], False)
app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")
from processing.core.Processing import Processing
Processing.initialize()
import processing
import bicorseg_qgis
plugin = bicorseg_qgis.classFactory(None)
plugin.initProcessing()
provider = QgsApplication.processingRegistry().providerById("bicorseg")
out = {"algorithms": sorted(a.id() for a in provider.algorithms())}
try:
    processing.run("bicorseg:segmentlandcover", {"INPUT": sys.argv[1], "OUTPUT": sys.argv[2]},
                   feedback=QgsProcessingFeedback(), context=QgsProcessingContext())
    out["error"] = None
except QgsProcessingException as exc:
    out["error"] = str(exc)
try:
    processing.run("bicorseg:trainmodel", {"INPUT": sys.argv[1], "LABELS": sys.argv[3], "CLASS_FIELD": "class",
                   "OUTPUT_MODEL": sys.argv[4], "REPORT": sys.argv[4] + ".html"},
                   feedback=QgsProcessingFeedback(), context=QgsProcessingContext())
    out["train_error"] = None
except QgsProcessingException as exc:
    out["train_error"] = str(exc)
chips = processing.run("bicorseg:exporttrainingdata", {"INPUT": sys.argv[1], "LABELS": sys.argv[3],
                       "CLASS_FIELD": "class", "TILE_SIZE": 32, "OVERLAP": 0, "OUTPUT_FOLDER": sys.argv[5]},
                       feedback=QgsProcessingFeedback(), context=QgsProcessingContext())
out["chips"] = chips["TRAIN_CHIPS"] + chips["VAL_CHIPS"]
out["torch_imported"] = "torch" in sys.modules and sys.modules["torch"] is not None
diag = processing.run("bicorseg:diagnostics", {"OUTPUT": "TEMPORARY_OUTPUT"}, feedback=QgsProcessingFeedback(),
                      context=QgsProcessingContext())
out["summary"] = diag["SUMMARY"]
out["output_exists"] = __import__("os").path.exists(sys.argv[2])
print("RESULT" + json.dumps(out))
"""


def test_provider_loads_and_segment_explains_the_install_without_backends(tmp_path, rgb_raster):
    from tests.training.labelled_raster import class_map, trace, write_labels

    raster, _ = rgb_raster
    output = tmp_path / "classes.tif"
    labels = write_labels(tmp_path / "labels.gpkg", trace(class_map(40, 56)), crs="EPSG:32640")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(raster), str(output), str(labels), str(tmp_path / "model.onnx"),
         str(tmp_path / "chips")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, proc.stdout + proc.stderr
    result = json.loads(lines[-1].removeprefix("RESULT"))
    assert "bicorseg:installdependencies" in result["algorithms"] and len(result["algorithms"]) == 7
    message = result["error"]
    assert message is not None
    assert "onnxruntime or torch" in message
    assert "Install dependencies" in message and "bicorseg:installdependencies" in message
    assert "numpy<2" in message  # never lets pip upgrade the numpy QGIS was built against
    assert "restart QGIS" in message
    assert not result["output_exists"]
    assert "onnxruntime or torch" in result["summary"]
    # training says it needs torch and names the installer's training profile; exporting chips needs no torch
    train = result["train_error"]
    assert train is not None and "torch" in train and "profile 'training'" in train
    assert "PROFILE=training" in train and "segmentation works without them" in train
    assert not (tmp_path / "model.onnx").exists()
    assert result["chips"] > 0 and not result["torch_imported"]


def test_install_instructions_name_the_platform_command(monkeypatch, qgis_app):
    from bicorseg_qgis.algorithms import base

    monkeypatch.setattr(base.platform, "system", lambda: "Windows")
    text = base.install_instructions(["torch"])
    assert "OSGeo4W Shell" in text and "python -m pip install torch" in text
    monkeypatch.setattr(base.platform, "system", lambda: "Linux")
    text = base.install_instructions(["rasterio", "onnxruntime or torch"])
    assert "qgis_process run bicorseg:installdependencies -- PROFILE=cpu" in text
    assert "--user" not in text  # PEP 668 (Debian 12, Ubuntu 23.04+) refuses pip into the system Python
    assert "README" not in text  # the plugin zip's README is not where users look from a message
