"""BiCoR-Seg land-cover segmentation for QGIS: entry point that QGIS calls when it loads the plugin."""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:
    """Return the plugin object; the import is lazy so that QGIS's plugin scan stays cheap."""
    from .plugin import BiCoRSegPlugin

    return BiCoRSegPlugin(iface)
