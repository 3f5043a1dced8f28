#!/usr/bin/env python3
"""Write a tiny fake of the raw ISPRS Vaihingen layout into ./raw (run from anywhere; seeded, reproducible).

raw/top/top_mosaic_09cm_areaN.tif                         3-band uint8 NIR-R-G GeoTIFF, odd sizes
raw/gts_complete/top_mosaic_09cm_areaN.tif                RGB colour labels, six classes
raw/gts_eroded/top_mosaic_09cm_areaN_noBoundary.tif       same with black (0, 0, 0) class boundaries
Areas 1, 3 (train), 30 (val), 2 (test). Area 1's complete label has one pixel of an unknown colour.
"""

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

PALETTE = np.array([(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)], np.uint8)
TILES = {"area1": (40, 52), "area3": (36, 36), "area30": (44, 38), "area2": (50, 41)}  # (height, width)
HERE = Path(__file__).resolve().parent


def blocky_classes(rng, height, width, cells=6):
    grid = rng.integers(0, len(PALETTE), size=(cells, cells))
    rows = np.arange(height) * cells // height
    cols = np.arange(width) * cells // width
    return grid[rows[:, None], cols[None, :]]


def boundaries(classes):
    pad = np.pad(classes, 1, mode="edge")
    edge = np.zeros(classes.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            edge |= pad[dy : dy + classes.shape[0], dx : dx + classes.shape[1]] != classes
    return edge


def write(path, array, transform):
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": "uint8",
        "crs": "EPSG:32632",
        "transform": transform,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def main():
    rng = np.random.default_rng(33)
    for i, (tile, (height, width)) in enumerate(TILES.items()):
        transform = from_origin(496000 + 100 * i, 5420000, 0.09, 0.09)
        image = rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)
        classes = blocky_classes(rng, height, width)
        complete = PALETTE[classes].transpose(2, 0, 1).copy()
        eroded = complete.copy()
        eroded[:, boundaries(classes)] = 0
        if tile == "area1":
            complete[:, 0, 0] = (12, 34, 56)
        write(HERE / "raw" / "top" / f"top_mosaic_09cm_{tile}.tif", image, transform)
        write(HERE / "raw" / "gts_complete" / f"top_mosaic_09cm_{tile}.tif", complete, transform)
        write(HERE / "raw" / "gts_eroded" / f"top_mosaic_09cm_{tile}_noBoundary.tif", eroded, transform)


if __name__ == "__main__":
    main()
