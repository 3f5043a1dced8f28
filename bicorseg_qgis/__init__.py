"""BiCoR-Seg land-cover segmentation for QGIS: entry point that QGIS calls when it loads the plugin."""

from __future__ import annotations

from typing import Any


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
