"""BiCoR-Seg land-cover segmentation for QGIS: entry point that QGIS calls when it loads the plugin.

The engine is reached as ``bicorseg_qgis.engine`` and always as the package root (``from ..engine import X``):

* in the installed plugin (the zip of ``make package``) the engine is a real sub-package, ``bicorseg_qgis/engine``;
* in a repository checkout it is the top-level ``engine`` package beside this one, and ``bicorseg_qgis.engine``
  is that same module object (registered in :data:`sys.modules` below), so an error raised as
  ``engine.errors.X`` is caught as ``bicorseg_qgis.engine.X``: exactly one engine per process in both modes.

The training package is reached the same way, as ``bicorseg_qgis.training`` (vendored in the zip, the repository's
``training`` in a checkout), and only from the two training algorithms, lazily (``from ..training import X``).

The installed plugin adds no generic top-level name (``engine``, ``training``) to QGIS's interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _link_repository_packages() -> None:
    """In a repository checkout, make ``bicorseg_qgis.engine`` / ``.training`` the repository's packages themselves."""
    here = Path(__file__).resolve().parent
    if not (here / "engine" / "__init__.py").is_file():  # else the installed plugin: the engine ships inside it
        try:
            import engine
        except ImportError as exc:
            raise ImportError(
                "bicorseg_qgis runs from a repository checkout but the repository's 'engine' package is not "
                "importable; put the repository root on PYTHONPATH, or install the zip that `make package` builds."
            ) from exc
        # Only the package root is ever imported through this name (an AST test and import-linter enforce it), so
        # no submodule is loaded a second time under "bicorseg_qgis.engine.*".
        sys.modules.setdefault(f"{__name__}.engine", engine)
    if not (here / "training" / "__init__.py").is_file():
        try:
            import training  # its root imports nothing heavy: the public names load on first use
        except ImportError:
            return  # a checkout without the training package: the training algorithms say what is missing
        sys.modules.setdefault(f"{__name__}.training", training)


_link_repository_packages()


def classFactory(iface: Any) -> Any:
    """Return the plugin object; the import is lazy so that QGIS's plugin scan stays cheap.

    The plugin's private dependency folder (``bicorseg:installdependencies``) goes on ``sys.path`` first, before
    anything imports the engine; qgis_process calls this too.
    """
    from qgis.core import QgsApplication

    from .dependencies import activate, dependencies_folder
    from .plugin import BiCoRSegPlugin

    activate(dependencies_folder(QgsApplication.qgisSettingsDirPath()))
    return BiCoRSegPlugin(iface)
