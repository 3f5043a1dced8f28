#!/usr/bin/env python3
"""Write a tiny fake of the raw ISPRS Vaihingen layout into ./raw (run from anywhere; seeded, reproducible).

raw/top/top_mosaic_09cm_areaN.tif                         3-band uint8 NIR-R-G GeoTIFF, odd sizes
raw/gts_complete/top_mosaic_09cm_areaN.tif                RGB colour labels, six classes
raw/gts_eroded/top_mosaic_09cm_areaN_noBoundary.tif       same with black (0, 0, 0) class boundaries
Areas 1, 3 (train), 30 (val), 2 (test). Area 1's complete label has one pixel of an unknown colour.
"""

import sys
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/data: the shared ISPRS fake pieces
from isprs_fake import PALETTE, blocky_classes, boundaries, write

TILES = {"area1": (40, 52), "area3": (36, 36), "area30": (44, 38), "area2": (50, 41)}  # (height, width)
HERE = Path(__file__).resolve().parent
CRS = "EPSG:32632"


def main():
    rng = np.random.default_rng(33)
    for i, (tile, (height, width)) in enumerate(TILES.items()):
        transform = from_origin(496000 + 100 * i, 5420000, 0.09, 0.09)
        image = rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)
        classes = blocky_classes(rng, height, width, cells=6)
        complete = PALETTE[classes].transpose(2, 0, 1).copy()
        eroded = complete.copy()
        eroded[:, boundaries(classes)] = 0
        if tile == "area1":
            complete[:, 0, 0] = (12, 34, 56)
        write(HERE / "raw" / "top" / f"top_mosaic_09cm_{tile}.tif", image, transform, CRS)
        write(HERE / "raw" / "gts_complete" / f"top_mosaic_09cm_{tile}.tif", complete, transform, CRS)
        write(HERE / "raw" / "gts_eroded" / f"top_mosaic_09cm_{tile}_noBoundary.tif", eroded, transform, CRS)


if __name__ == "__main__":
    main()
