"""Write the bundled sample raster: one Dubai validation image as a GeoTIFF with an ASSIGNED georeference.

The Dubai aerial dataset (CC0) has no georeference and no published ground sampling distance. To show a
real GIS workflow, this script assigns a plausible one (UTM zone 40N over Dubai, 1 m pixels) and says so in the
file's metadata. The image comes from a validation tile the default model never trained on.

Usage: python scripts/make_sample_raster.py [--tile 1 --part 9] [-o resources/sample/dubai_sample.tif]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dubai-aerial"
#: Nominal origin near Dubai Creek in EPSG:32640 (UTM 40N) and a nominal 1 m pixel: assigned, not surveyed.
ORIGIN_EASTING_M, ORIGIN_NORTHING_M, PIXEL_SIZE_M = 327_000.0, 2_795_000.0, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tile", type=int, default=1)
    parser.add_argument("--part", type=int, default=9)
    parser.add_argument("-o", "--output", type=Path, default=Path("resources/sample/dubai_sample.tif"))
    args = parser.parse_args()
    source = args.data / f"tile{args.tile}" / "images" / f"image_part_{args.part:03d}.jpg"
    image = np.asarray(Image.open(source).convert("RGB")).transpose(2, 0, 1)
    profile = {
        "driver": "GTiff",
        "width": image.shape[2],
        "height": image.shape[1],
        "count": 3,
        "dtype": "uint8",
        "crs": CRS.from_epsg(32640),
        "transform": from_origin(ORIGIN_EASTING_M, ORIGIN_NORTHING_M, PIXEL_SIZE_M, PIXEL_SIZE_M),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "photometric": "RGB",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(args.output, "w", **profile) as dst:
        dst.write(image)
        dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        dst.update_tags(
            SOURCE=f"Dubai aerial land-cover dataset, tile {args.tile} part {args.part} (validation tile)",
            LICENSE="CC0 1.0 (public domain); imagery by MBRSC, labels by Humans in the Loop",
            GEOREFERENCE=(
                "ASSIGNED for demonstration: the source image has no georeference. EPSG:32640 origin "
                f"({ORIGIN_EASTING_M:.0f}, {ORIGIN_NORTHING_M:.0f}) and {PIXEL_SIZE_M} m pixels are nominal."
            ),
        )
    print(f"wrote {args.output} ({image.shape[2]}x{image.shape[1]})")


if __name__ == "__main__":
    main()
