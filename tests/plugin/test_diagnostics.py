"""bicorseg:diagnostics reports versions, backends and devices as JSON and in the log."""

from __future__ import annotations

import json
import sys

import pytest
from qgis.core import Qgis

pytestmark = pytest.mark.qgis


def test_diagnostics_report_names_qgis_python_and_the_engine_diagnosis(tmp_path, run_alg):
    result = run_alg("bicorseg:diagnostics", {"OUTPUT": str(tmp_path / "diag.json")})
    report = json.loads((tmp_path / "diag.json").read_text())
    assert report["qgis"] == Qgis.QGIS_VERSION
    assert report["python"] == sys.version.split()[0]
    assert report["missing_packages"] == []
    assert report["engine_diagnosis"]
    assert "engine_error" not in report
    assert "engine ready" in result["SUMMARY"]
    assert "CUDA" in result["SUMMARY"]


def test_diagnostics_runs_without_a_report_file(run_alg):
    result = run_alg("bicorseg:diagnostics", {})
    assert result["SUMMARY"]
    assert "OUTPUT" not in result or not result["OUTPUT"]


def test_diagnostics_says_where_the_installed_dependencies_live_and_how_to_uninstall(tmp_path, run_alg):
    from qgis.core import QgsApplication

    run_alg("bicorseg:diagnostics", {"OUTPUT": str(tmp_path / "diag.json")})
    folder = json.loads((tmp_path / "diag.json").read_text())["dependencies"]
    profile = QgsApplication.qgisSettingsDirPath().rstrip("/")
    assert folder["folder"] == f"{profile}/python/dependencies/bicorseg-qgis"
    assert f"Delete the folder {folder['folder']}" in folder["uninstall"]
    assert "installed" in folder and "on_sys_path" in folder
