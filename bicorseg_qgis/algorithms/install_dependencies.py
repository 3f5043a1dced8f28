"""``bicorseg:installdependencies``: pinned packages into the plugin's private folder of the QGIS profile.

Thin: parameters in, one call into :mod:`bicorseg_qgis.dependencies`, outputs out. pip's output streams into the
log line by line and Cancel stops pip; a failed or canceled install leaves the previous folder working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
)

from .. import dependencies
from ..compat import mark_advanced
from .base import BiCoRSegAlgorithm


def profile_folder() -> Path:
    """The dependency folder of the running QGIS profile (``QGIS_CUSTOM_CONFIG_PATH`` and ``--profile`` apply)."""
    return dependencies.dependencies_folder(Path(QgsApplication.qgisSettingsDirPath()))


class InstallDependenciesAlgorithm(BiCoRSegAlgorithm):
    """Install the packages the plugin needs, for QGIS's own Python, without touching QGIS's numpy or GDAL."""

    PROFILE = "PROFILE"
    FORCE = "FORCE"
    FOLDER = "FOLDER"
    PACKAGES = "PACKAGES"

    def name(self) -> str:
        """Frozen algorithm id (``bicorseg:installdependencies``)."""
        return "installdependencies"

    def displayName(self) -> str:
        """Toolbox title."""
        return self.tr("Install dependencies")

    def group(self) -> str:
        """Toolbox group (translated)."""
        return self.tr("Set-up")

    def groupId(self) -> str:
        """Stable group id."""
        return "setup"

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return self.tr(
            "Installs the pinned Python packages BiCoR-Seg needs with pip into a folder private to the plugin in "
            "your QGIS profile (python/dependencies/bicorseg-qgis). Profile 'cpu': ONNX Runtime and rasterio; "
            "'cuda': onnxruntime-gpu instead (NVIDIA GPU with CUDA 12 and cuDNN 9); 'training': also PyTorch "
            "2.13.0 and what the training algorithms need. QGIS's own numpy and GDAL are never replaced. "
            "Running it again does nothing when the packages are already there; a failed install keeps the "
            "previous folder. Uses your normal pip configuration (proxy, index). To uninstall, delete the folder "
            "(Diagnostics shows where it is)."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the profile, the advanced FORCE switch and the outputs."""
        self.addParameter(
            QgsProcessingParameterEnum(
                self.PROFILE,
                self.tr("Packages for"),
                options=list(dependencies.PROFILES),
                defaultValue="cpu",
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            mark_advanced(
                QgsProcessingParameterBoolean(
                    self.FORCE, self.tr("Reinstall even when already installed"), defaultValue=False
                )
            )
        )
        self.addOutput(QgsProcessingOutputFolder(self.FOLDER, self.tr("Dependency folder")))
        self.addOutput(QgsProcessingOutputString(self.PACKAGES, self.tr("Installed packages")))

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Plan, find pip, install (or skip when satisfied), and put the folder on ``sys.path``."""
        profile = self.parameterAsEnumString(parameters, self.PROFILE, context) or "cpu"
        force = self.parameterAsBoolean(parameters, self.FORCE, context)
        folder = profile_folder()
        plan = dependencies.plan_install(profile, dependencies.host_versions())
        feedback.pushInfo(self.tr("Dependency folder: {folder}").format(folder=folder))
        if not force and dependencies.is_satisfied(folder, plan):
            dependencies.activate(folder, plan.python)
            recorded = (dependencies.read_stamp(folder) or {}).get("pins")
            pins = recorded if isinstance(recorded, list) else []
            feedback.pushInfo(self.tr("Already installed ({profile}); nothing to do.").format(profile=profile))
            return {self.FOLDER: str(folder), self.PACKAGES: " ".join(str(pin) for pin in pins)}
        try:
            python, pip_version = dependencies.find_python()
            feedback.pushInfo(self.tr("Python: {python} ({pip})").format(python=python, pip=pip_version))
            result = dependencies.install(plan, folder, python, feedback.pushConsoleInfo, feedback.isCanceled)
        except dependencies.DependencyInstallError as exc:
            raise QgsProcessingException(str(exc)) from exc
        dependencies.activate(folder, plan.python)
        feedback.pushInfo(
            self.tr("Installed {n} packages into {folder}; restart QGIS if an older version was already in use.")
            .format(n=len(result.pins), folder=folder)
        )  # fmt: skip
        return {self.FOLDER: str(folder), self.PACKAGES: " ".join(result.pins)}
