"""Class names stored in a class raster as GDAL category names, read without the GDAL Python bindings.

GDAL keeps a GeoTIFF's category names in its PAM sidecar (``NAME.aux.xml``), and a VRT keeps them in the VRT
itself; rasterio exposes neither, and the engine does not depend on ``osgeo``, so both are parsed here. This is
the reading side of :meth:`engine.raster_grid.GridFiles.write_category_names`.
"""

from __future__ import annotations

import logging

# Python's expat refuses entity expansion attacks (billion laughs) since expat 2.4; the files are size-capped too.
import xml.etree.ElementTree as ET  # nosec B405
from pathlib import Path

__all__ = ["MAX_CATEGORY_NAMES", "read_category_names"]

logger = logging.getLogger(__name__)

#: Names a UInt8 class raster can use: class indexes 0..254 (255 is the class raster's nodata).
MAX_CATEGORY_NAMES = 255
#: Larger sidecars are not category lists worth parsing (a PAM file of names for 255 classes is a few kB).
_MAX_XML_BYTES = 16 * 1024 * 1024


def read_category_names(path: Path, band: int = 1) -> tuple[str, ...] | None:
    """Category names of one band, as ``gdalinfo`` lists them; None when the raster has none.

    GDAL pads a category list up to the largest value with empty names; the trailing empty names are dropped and
    an empty name inside the list becomes its class index (``"1"``).

    Args:
        path: The raster file (GeoTIFF or other format with a PAM sidecar, or a VRT).
        band: 1-based band number.
    """
    path = Path(path)
    candidates = [(path, "VRTRasterBand")] if path.suffix.lower() == ".vrt" else []
    candidates.append((path.with_name(path.name + ".aux.xml"), "PAMRasterBand"))
    for xml_path, band_tag in candidates:
        names = _names_in(xml_path, f"{band_tag}[@band='{band}']")
        if names is not None:
            return names
    return None


def _names_in(xml_path: Path, band_query: str) -> tuple[str, ...] | None:
    if not xml_path.is_file() or xml_path.stat().st_size > _MAX_XML_BYTES:
        return None
    try:
        root = ET.parse(xml_path).getroot()  # nosec B314
    except ET.ParseError as exc:
        logger.warning("Ignoring the category names in '%s', which is not valid XML (%s).", xml_path, exc)
        return None
    element = root.find(f"{band_query}/CategoryNames")
    if element is None:
        return None
    named = [category.text or "" for category in element.findall("Category")][:MAX_CATEGORY_NAMES]
    while named and not named[-1]:
        named.pop()
    return tuple(name or str(index) for index, name in enumerate(named)) or None
