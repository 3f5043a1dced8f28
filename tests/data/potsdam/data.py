#!/usr/bin/env python3
"""Write a tiny fake of the raw ISPRS Potsdam layout into ./raw (seeded, reproducible).

raw/2_Ortho_RGB/top_potsdam_X_Y_RGB.tif                           3-band uint8 RGB GeoTIFF
raw/5_Labels_all/top_potsdam_X_Y_label.tif                        RGB colour labels
raw/5_Labels_all_noBoundary/top_potsdam_X_Y_label_noBoundary.tif  with black (0, 0, 0) class boundaries
Tiles 2_11 (train), 2_10 (val), 2_13 (test) and 7_10 (faulty labels: must be dropped).
"""

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

PALETTE = np.array([(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)], np.uint8)
TILES = {"2_11": (48, 40), "2_10": (40, 40), "2_13": (45, 37), "7_10": (32, 32)}  # (height, width)
HERE = Path(__file__).resolve().parent


def blocky_classes(rng, height, width, cells=5):
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
        "crs": "EPSG:32633",
        "transform": transform,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def main():
    rng = np.random.default_rng(38)
    for i, (tile, (height, width)) in enumerate(TILES.items()):
        transform = from_origin(366000 + 50 * i, 5808000, 0.05, 0.05)
        image = rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)
        classes = blocky_classes(rng, height, width)
        label = PALETTE[classes].transpose(2, 0, 1).copy()
        eroded = label.copy()
        eroded[:, boundaries(classes)] = 0
        write(HERE / "raw" / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif", image, transform)
        write(HERE / "raw" / "5_Labels_all" / f"top_potsdam_{tile}_label.tif", label, transform)
        write(HERE / "raw" / "5_Labels_all_noBoundary" / f"top_potsdam_{tile}_label_noBoundary.tif", eroded, transform)


if __name__ == "__main__":
    main()
