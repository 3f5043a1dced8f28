"""Tiny labelled rasters for the fine-tuning tests: a class map, an RGB raster that shows it, polygons that trace it.

The raster's brightest band at a pixel is that pixel's class (0 red, 1 green, 2 blue), so a model can learn it in a
few steps; the polygons are the class map's regions traced with ``rasterio.features.shapes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from benchmarks.dubai_scene import write_polygons

CRS = "EPSG:32640"
ORIGIN = (500_000.0, 2_800_000.0)
PIXEL_M = 1.0
NAMES = ("water", "trees", "roofs")


def class_map(height: int = 96, width: int = 96, block: int = 16, seed: int = 0) -> np.ndarray:
    """Blocky map of classes 0..2."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 3, size=(-(-height // block), -(-width // block)))
    return np.kron(blocks, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)


def write_raster(path: Path, classes: np.ndarray, seed: int = 1, bands: int = 3, crs: str | None = CRS,
                 nodata_rows: int = 0) -> Path:  # fmt: skip
    """RGB(+) uint8 GeoTIFF whose brightest band is the class."""
    rng = np.random.default_rng(seed)
    height, width = classes.shape
    data = rng.integers(20, 90, size=(bands, height, width)).astype(np.uint8)
    for band in range(3):
        data[band] = np.where(classes == band, rng.integers(170, 250, size=(height, width)), data[band])
    if nodata_rows:
        data[:, :nodata_rows] = 0
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": "uint8",
               "transform": from_origin(*ORIGIN, PIXEL_M, PIXEL_M), "nodata": 0 if nodata_rows else None}  # fmt: skip
    if crs:
        profile["crs"] = crs
    if bands == 3:
        profile["photometric"] = "RGB"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if bands != 3:  # no band is alpha: GDAL would call the fourth band of a byte raster alpha
            dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (bands - 1)
    return path


def transform() -> rasterio.Affine:
    return from_origin(*ORIGIN, PIXEL_M, PIXEL_M)


def trace(classes: np.ndarray, window: Window | None = None, names: tuple = NAMES) -> list[tuple[dict, object]]:
    """Class regions inside ``window`` as (GeoJSON, class name) pairs (names None: the integer class)."""
    window = window or Window(0, 0, classes.shape[1], classes.shape[0])
    part = classes[int(window.row_off) : int(window.row_off + window.height),
                   int(window.col_off) : int(window.col_off + window.width)]  # fmt: skip
    shapes = rasterio.features.shapes(part, transform=window_transform(window, transform()))
    return [(geometry, names[int(v)] if names else int(v)) for geometry, v in shapes]


def write_labels(path: Path, shapes: list[tuple[dict, object]], crs: str = CRS, field: str = "class") -> Path:
    """The shapes as a GeoPackage with a class field."""
    return write_polygons(path, shapes, crs=crs, field=field)


def box(col0: int, row0: int, col1: int, row1: int) -> dict:
    """A GeoJSON rectangle over pixel columns col0..col1 and rows row0..row1 of the test grid."""
    t = transform()
    x0, y0 = t * (col0, row0)
    x1, y1 = t * (col1, row1)
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
