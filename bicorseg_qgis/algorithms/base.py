"""Shared base of the BiCoR-Seg algorithms: tr(), help, dependency check and the one error boundary.

The engine raises its own errors (``engine/errors.py``) whose messages already name the problem and the fix;
:meth:`BiCoRSegAlgorithm.processAlgorithm` is the single place that turns them into ``QgsProcessingException``.
Heavy libraries (numpy, rasterio, onnxruntime, torch) are imported only inside ``execute``, after
:func:`missing_dependencies` has checked them, so the provider loads in a QGIS that has none of them.
"""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .. import engine
from ..engine import BiCoRSegError, CanceledError, OutOfMemoryError
from ..feedback import engine_messages_to_feedback

HELP_URL = "https://github.com/bicorseg/bicorseg-qgis#readme"
#: The engine's loggers: ``engine.*`` in a repository checkout, ``bicorseg_qgis.engine.*`` in the installed plugin.
ENGINE_LOGGER = engine.__name__
#: Top-level names of this plugin's own code: an ImportError naming them is a bug, not a missing package.
_OWN_PACKAGES = frozenset({__package__.split(".")[0], engine.__name__.split(".")[0]})
_ICON = Path(__file__).resolve().parent.parent / "resources" / "icons" / "bicorseg.svg"

#: import name -> pip requirement. numpy stays below 2 because QGIS's own bindings are built against numpy 1.x.
PIP_NAMES: dict[str, str] = {
    "numpy": "numpy<2",
    "rasterio": "rasterio",
    "onnxruntime": "onnxruntime",
    "torch": "torch",
    "onnx": "onnx",
    "yaml": "PyYAML",
    "PIL": "Pillow",
}


def tr(text: str) -> str:
    """Translate a user-visible string in the ``Processing`` context, as QGIS's own algorithms do."""
    return str(QCoreApplication.translate("Processing", text))


def missing_dependencies(required: Iterable[str], any_of: Sequence[str] = ()) -> list[str]:
    """Import names from ``required`` that do not import, plus ``any_of`` when none of those imports.

    Importing (not just finding) catches broken installs, e.g. a torch whose native libraries fail to load.
    """
    missing = [name for name in required if not _imports(name)]
    if any_of and not any(_imports(name) for name in any_of):
        missing.append(" or ".join(any_of))
    return missing


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except (ImportError, OSError, RuntimeError):  # a broken native library fails with OSError/RuntimeError
        return False
    return True


def install_instructions(missing: Sequence[str], profile: str = "cpu") -> str:
    """Message naming what is missing and the exact command that installs it into the Python QGIS runs.

    ``missing`` holds import names, or ``"a or b"`` alternatives (the first alternative is the one suggested).
    ``profile`` is the dependency installer's profile that brings them (``training`` for the training algorithms).
    The plugin never runs pip itself: installing into QGIS's interpreter is the user's decision.
    """
    requirements = []
    for entry in missing:
        first = entry.split(" or ")[0]
        requirements.append(PIP_NAMES.get(first, first))
    if "numpy<2" not in requirements:
        requirements.append("numpy<2")  # keeps pip from upgrading the numpy QGIS was built against
    packages = " ".join(f'"{r}"' if "<" in r else r for r in requirements)
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    system = platform.system()
    if system == "Windows":
        how = tr("open the 'OSGeo4W Shell' from the Start menu (as administrator for an all-users install) and run")
        command = f"python -m pip install {packages}"
    elif system == "Darwin":
        how = tr("open a Terminal and run")
        command = f'"{Path(sys.prefix) / "bin" / "python3"}" -m pip install --user {packages}'
    else:
        how = tr("open a terminal and run (QGIS 3.22 on Debian/Ubuntu: qgis_process.bin)")
        command = f"qgis_process run bicorseg:installdependencies -- PROFILE={profile}"  # PEP 668 refuses plain pip
    if profile == "training":
        return tr(
            "Training needs the Python package(s) {missing}, which are not installed in the {python} that QGIS uses "
            "(segmentation works without them). Install them with Processing Toolbox > BiCoR-Seg > Set-up > Install "
            "dependencies, profile 'training' (PyTorch 2.13.0 for the CPU and what training needs), which puts "
            "pinned versions into a folder of your QGIS profile and keeps QGIS's numpy<2, then restart QGIS. Or "
            "{how}:\n    {command}"
        ).format(missing=", ".join(missing), python=python, how=how, command=command)
    return tr(
        "BiCoR-Seg needs the Python package(s) {missing}, which are not installed in the {python} that QGIS uses. "
        "Install them with Processing Toolbox > BiCoR-Seg > Set-up > Install dependencies (profile cpu; cuda for "
        "an NVIDIA GPU), which puts pinned versions into a folder of your QGIS profile and keeps QGIS's numpy<2, "
        "then restart QGIS. Or {how}:\n    {command}"
    ).format(missing=", ".join(missing), python=python, how=how, command=command)


class BiCoRSegAlgorithm(QgsProcessingAlgorithm):
    """Base of every BiCoR-Seg algorithm. Subclasses implement :meth:`execute` and :meth:`required_modules`."""

    #: The dependency installer's profile that brings what :meth:`required_modules` names.
    DEPENDENCY_PROFILE = "cpu"

    def tr(self, text: str) -> str:
        """Translate a user-visible string."""
        return tr(text)

    def createInstance(self) -> BiCoRSegAlgorithm:
        """Processing copies algorithms before each run."""
        return type(self)()

    def group(self) -> str:
        """Toolbox group (translated)."""
        return self.tr("Land cover")

    def groupId(self) -> str:
        """Stable group id."""
        return "landcover"

    def helpUrl(self) -> str:
        """Link from the dialog's Help button."""
        return HELP_URL

    def icon(self) -> QIcon:
        """The plugin's icon."""
        return QIcon(str(_ICON))

    def required_modules(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[list[str], list[str]]:
        """Import names this run needs: (all of these, at least one of these)."""
        return [], []

    def execute(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """The algorithm's work; engine errors may propagate (the boundary translates them)."""
        raise NotImplementedError

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Check dependencies, run, and translate engine errors into ``QgsProcessingException`` (only here)."""
        required, any_of = self.required_modules(parameters, context)
        missing = missing_dependencies(required, any_of)
        if missing:
            raise QgsProcessingException(install_instructions(missing, self.DEPENDENCY_PROFILE))
        try:
            with engine_messages_to_feedback(feedback, ENGINE_LOGGER):
                return self.execute(parameters, context, feedback)
        except CanceledError as exc:
            raise QgsProcessingException(self.tr("Canceled; no output was written.")) from exc
        except ImportError as exc:
            # BackendUnavailableError is an ImportError too: a missing library or an unusable device.
            top_level = (getattr(exc, "name", None) or "").split(".")[0]
            if top_level and top_level not in _OWN_PACKAGES and not isinstance(exc, BiCoRSegError):
                raise QgsProcessingException(install_instructions([top_level], self.DEPENDENCY_PROFILE)) from exc
            raise QgsProcessingException(str(exc)) from exc
        except BiCoRSegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except MemoryError as exc:  # outside the engine (which raises OutOfMemoryError with the same advice)
            raise QgsProcessingException(str(OutOfMemoryError())) from exc
