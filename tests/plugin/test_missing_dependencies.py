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
diag = processing.run("bicorseg:diagnostics", {"OUTPUT": "TEMPORARY_OUTPUT"}, feedback=QgsProcessingFeedback(),
                      context=QgsProcessingContext())
out["summary"] = diag["SUMMARY"]
out["output_exists"] = __import__("os").path.exists(sys.argv[2])
print("RESULT" + json.dumps(out))
"""


def test_provider_loads_and_segment_explains_the_install_without_backends(tmp_path, rgb_raster):
    raster, _ = rgb_raster
    output = tmp_path / "classes.tif"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(raster), str(output)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, proc.stdout + proc.stderr
    result = json.loads(lines[-1].removeprefix("RESULT"))
    assert "bicorseg:installdependencies" in result["algorithms"] and len(result["algorithms"]) == 5
    message = result["error"]
    assert message is not None
    assert "onnxruntime or torch" in message
    assert "Install dependencies" in message and "bicorseg:installdependencies" in message
    assert "numpy<2" in message  # never lets pip upgrade the numpy QGIS was built against
    assert "restart QGIS" in message
    assert not result["output_exists"]
    assert "onnxruntime or torch" in result["summary"]


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
