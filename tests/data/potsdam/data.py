#!/usr/bin/env python3
"""Write a tiny fake of the raw ISPRS Potsdam layout into ./raw (seeded, reproducible).

raw/2_Ortho_RGB/top_potsdam_X_Y_RGB.tif                           3-band uint8 RGB GeoTIFF
raw/5_Labels_all/top_potsdam_X_Y_label.tif                        RGB colour labels
raw/5_Labels_all_noBoundary/top_potsdam_X_Y_label_noBoundary.tif  with black (0, 0, 0) class boundaries
Tiles 2_11 (train), 2_10 (val), 2_13 (test) and 7_10 (faulty labels: must be dropped).
"""

import sys
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/data: the shared ISPRS fake pieces
from isprs_fake import PALETTE, blocky_classes, boundaries, write

TILES = {"2_11": (48, 40), "2_10": (40, 40), "2_13": (45, 37), "7_10": (32, 32)}  # (height, width)
HERE = Path(__file__).resolve().parent
CRS = "EPSG:32633"


def main():
    rng = np.random.default_rng(38)
    for i, (tile, (height, width)) in enumerate(TILES.items()):
        transform = from_origin(366000 + 50 * i, 5808000, 0.05, 0.05)
        image = rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)
        classes = blocky_classes(rng, height, width, cells=5)
        label = PALETTE[classes].transpose(2, 0, 1).copy()
        eroded = label.copy()
        eroded[:, boundaries(classes)] = 0
        write(HERE / "raw" / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif", image, transform, CRS)
        write(HERE / "raw" / "5_Labels_all" / f"top_potsdam_{tile}_label.tif", label, transform, CRS)
        write(
            HERE / "raw" / "5_Labels_all_noBoundary" / f"top_potsdam_{tile}_label_noBoundary.tif",
            eroded,
            transform,
            CRS,
        )


if __name__ == "__main__":
    main()
