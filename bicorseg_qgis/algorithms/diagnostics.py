"""``bicorseg:diagnostics``: versions, backends, devices, and why a device is not usable, as a report."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from .. import dependencies
from .base import BiCoRSegAlgorithm, install_instructions, missing_dependencies
from .install_dependencies import profile_folder


class DiagnosticsAlgorithm(BiCoRSegAlgorithm):
    """Reports what the plugin can run on: attach its output to bug reports."""

    OUTPUT = "OUTPUT"
    SUMMARY = "SUMMARY"

    def name(self) -> str:
        """Frozen algorithm id (``bicorseg:diagnostics``)."""
        return "diagnostics"

    def displayName(self) -> str:
        """Toolbox title."""
        return self.tr("Diagnostics")

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(
            "Lists the versions of QGIS, Python, numpy, rasterio, ONNX Runtime and PyTorch, the inference backends "
            "and devices that work, and why a GPU is not used (e.g. 'torch built without CUDA'). Runs even when "
            "libraries are missing, and says how to install them. Attach the JSON report to bug reports."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the report destination and the one-line summary output."""
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT, self.tr("Diagnostics report"), self.tr("JSON files (*.json)"), optional=True
            )
        )
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, self.tr("Summary")))

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Collect the plugin-side facts, then the engine's ``diagnose()`` when the engine can import."""
        report: dict[str, Any] = {
            "qgis": Qgis.QGIS_VERSION,
            "python": sys.version.split()[0],
            "python_prefix": sys.prefix,
            "platform": platform.platform(),
            "missing_packages": missing_dependencies(["numpy", "rasterio"], ["onnxruntime", "torch"]),
            "dependencies": self._dependency_folder(),
        }
        try:
            from ..engine import __version__ as engine_version
            from ..engine import diagnose

            report["engine"] = engine_version
            report["engine_diagnosis"] = diagnose()
        except ImportError as exc:
            report["engine_diagnosis"] = None
            report["engine_error"] = str(exc)
        if report["missing_packages"]:
            report["how_to_install"] = install_instructions(report["missing_packages"])
        text = json.dumps(report, indent=2, sort_keys=True, default=str)
        for line in text.splitlines():
            feedback.pushInfo(line)
        summary = self._summary(report)
        feedback.pushInfo(summary)
        outputs: dict[str, Any] = {self.SUMMARY: summary}
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if output:
            path = Path(output)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
            outputs[self.OUTPUT] = str(path)
        return outputs

    def _dependency_folder(self) -> dict[str, Any]:
        """Where Install dependencies puts packages, what is there, and how to uninstall (delete the folder)."""
        folder = profile_folder()
        stamp = dependencies.read_stamp(folder)
        return {
            "folder": str(folder),
            "installed": stamp,
            "on_sys_path": str(folder) in sys.path,
            "uninstall": self.tr("Delete the folder {folder} and restart QGIS.").format(folder=folder),
        }

    def _summary(self, report: dict[str, Any]) -> str:
        if report["missing_packages"]:
            return self.tr("Missing: {names}.").format(names=", ".join(report["missing_packages"]))
        if report.get("engine_error"):
            return self.tr("Engine unavailable: {error}").format(error=report["engine_error"])
        cuda = ((report.get("engine_diagnosis") or {}).get("devices") or {}).get("cuda") or {}
        gpu = (
            self.tr("CUDA usable")
            if cuda.get("usable")
            else self.tr("CUDA not usable ({reason})").format(reason=cuda.get("reason", "?"))
        )
        return self.tr("QGIS {qgis}, Python {python}; engine ready; {gpu}.").format(
            qgis=report["qgis"], python=report["python"], gpu=gpu
        )
