"""A georeferenced scene from one Dubai aerial tile, with label polygons traced from its mask (benchmarks, tests).

The nine parts of a tile are laid out 3 x 3 into one GeoTIFF (UTM 40N, nominal pixel size as the default model's
card: the dataset publishes none), optionally downscaled as the default model was trained (0.5). Label polygons are
the mask's class regions traced with ``rasterio.features.shapes`` inside a chosen window, written to a GeoPackage
with a text ``class`` field, the way a user would digitise them (but complete within the window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from numpy.typing import NDArray
from PIL import Image
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

REPO = Path(__file__).resolve().parents[1]
DUBAI = REPO.parent / "shared" / "data" / "dubai-aerial"
CRS = "EPSG:32640"
ORIGIN = (500_000.0, 2_800_000.0)
IGNORE = 255
CLASS_NAMES = ("building", "land", "road", "vegetation", "water")


@dataclass(frozen=True)
class Scene:
    """One tile as a raster and its reference classes.

    Attributes:
        raster: The GeoTIFF (RGB uint8).
        classes: (H, W) reference class indices, 255 where the mask has no class.
        transform: The raster's affine transform.
        part_shape: (rows, cols) of one part in the mosaic.
    """

    raster: Path
    classes: NDArray[np.uint8]
    transform: rasterio.Affine
    part_shape: tuple[int, int]

    def part_window(self, row: int, col: int, rows: int = 1, cols: int = 1) -> Window:
        """The window of parts ``row..row+rows-1`` x ``col..col+cols-1`` of the 3 x 3 layout."""
        h, w = self.part_shape
        return Window(col * w, row * h, cols * w, rows * h)


def build_scene(tile: int, out_dir: Path, downscale: float = 0.5, gsd_m: float = 2.0) -> Scene:
    """Mosaic the nine parts of ``tile`` (3 x 3), downscale, and write ``tile<N>.tif`` into ``out_dir``."""
    from training.datasets.base import colours_to_indices, read_rgb
    from training.datasets.colour_masks import DUBAI_CLASSES, DUBAI_IGNORE_COLOURS

    folder = DUBAI / f"tile{tile}"
    images = sorted((folder / "images").glob("*.jpg"))
    if len(images) != 9:
        raise FileNotFoundError(f"expected 9 parts in {folder}, found {len(images)}")
    palette = tuple(colour for _, colour in DUBAI_CLASSES)
    parts = []
    for image_path in images:
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask, _ = colours_to_indices(
            read_rgb(folder / "masks" / f"{image_path.stem}.png"), palette, DUBAI_IGNORE_COLOURS
        )
        size = (max(1, round(image.shape[1] * downscale)), max(1, round(image.shape[0] * downscale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
        parts.append((image, mask))
    h = min(p[0].shape[0] for p in parts)
    w = min(p[0].shape[1] for p in parts)
    rgb = np.zeros((3 * h, 3 * w, 3), dtype=np.uint8)
    classes = np.full((3 * h, 3 * w), IGNORE, dtype=np.uint8)
    for index, (image, mask) in enumerate(parts):
        r, c = divmod(index, 3)
        rgb[r * h : (r + 1) * h, c * w : (c + 1) * w] = image[:h, :w]
        classes[r * h : (r + 1) * h, c * w : (c + 1) * w] = mask[:h, :w]
    out_dir.mkdir(parents=True, exist_ok=True)
    raster = out_dir / f"tile{tile}.tif"
    transform = from_origin(*ORIGIN, gsd_m, gsd_m)
    profile = {"driver": "GTiff", "width": 3 * w, "height": 3 * h, "count": 3, "dtype": "uint8", "crs": CRS,
               "transform": transform, "tiled": True, "compress": "deflate", "photometric": "RGB"}  # fmt: skip
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return Scene(raster, classes, transform, (h, w))


def trace_polygons(
    scene: Scene, window: Window, keep: float = 1.0, min_pixels: int = 4, seed: int = 0
) -> list[tuple[dict, str]]:
    """The mask's class regions inside ``window`` as (GeoJSON polygon, class name), a share ``keep`` of them."""
    rows = slice(int(window.row_off), int(window.row_off + window.height))
    cols = slice(int(window.col_off), int(window.col_off + window.width))
    classes = scene.classes[rows, cols]
    transform = window_transform(window, scene.transform)
    shapes = [
        (geometry, CLASS_NAMES[int(value)])
        for geometry, value in rasterio.features.shapes(classes, mask=classes != IGNORE, transform=transform)
        if int(value) != IGNORE
    ]
    areas = [_pixel_area(g, transform) for g, _ in shapes]
    shapes = [s for s, a in zip(shapes, areas, strict=True) if a >= min_pixels]
    if keep < 1.0:
        rng = np.random.default_rng(seed)
        shapes = [s for s in shapes if rng.random() < keep]
    return shapes


def _pixel_area(geometry: dict, transform: rasterio.Affine) -> float:
    ring = np.asarray(geometry["coordinates"][0], dtype=np.float64)
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) / 2.0 / abs(transform.a * transform.e)


def write_polygons(path: Path, shapes: Sequence[tuple[dict, str | int | None]], crs: str = CRS,
                   field: str = "class") -> Path:  # fmt: skip
    """Write (GeoJSON polygon, class) pairs to a GeoPackage with GDAL/OGR (class None: area polygons, no field)."""
    import json

    from osgeo import ogr, osr

    driver = ogr.GetDriverByName("GPKG")
    if path.exists():
        driver.DeleteDataSource(str(path))
    dataset = driver.CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = dataset.CreateLayer(path.stem, srs, ogr.wkbMultiPolygon)
    with_field = any(value is not None for _, value in shapes)
    if with_field:
        kind = ogr.OFTInteger if all(isinstance(v, int) for _, v in shapes) else ogr.OFTString
        layer.CreateField(ogr.FieldDefn(field, kind))
    for geometry, value in shapes:
        feature = ogr.Feature(layer.GetLayerDefn())
        geom = ogr.CreateGeometryFromJson(json.dumps(geometry))
        feature.SetGeometry(ogr.ForceToMultiPolygon(geom))
        if with_field:
            feature.SetField(field, value)
        layer.CreateFeature(feature)
    dataset = None  # flush
    return path


def reference_window(scene: Scene, window: Window) -> NDArray[np.uint8]:
    """The reference classes of a window (255 = no class)."""
    return scene.classes[int(window.row_off) : int(window.row_off + window.height),
                         int(window.col_off) : int(window.col_off + window.width)]  # fmt: skip
