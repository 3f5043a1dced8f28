"""BiCoR-Seg engine: tile any raster, run a segmentation model, stitch and write GeoTIFFs.

Pure Python: never imports QGIS. torch and onnxruntime are imported lazily by the backends, so this package
imports without them. Inside the engine every import is relative, because the QGIS plugin ships this package
as ``bicorseg_qgis.engine``.
"""

from __future__ import annotations

__version__ = "0.1.0"
