"""Shared pieces of the tiny ISPRS (Potsdam, Vaihingen) raw-layout fakes: blocky labels, eroded edges, GeoTIFFs."""

from pathlib import Path

import numpy as np
import rasterio

#: ISPRS label colours: impervious surfaces, building, low vegetation, tree, car, clutter.
PALETTE = np.array([(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)], np.uint8)


def blocky_classes(rng, height, width, cells):
    """A (height, width) class map of cells x cells constant blocks (objects with straight edges)."""
    grid = rng.integers(0, len(PALETTE), size=(cells, cells))
    rows = np.arange(height) * cells // height
    cols = np.arange(width) * cells // width
    return grid[rows[:, None], cols[None, :]]


def boundaries(classes):
    """Pixels within one pixel of another class: where the eroded ISPRS labels are black."""
    pad = np.pad(classes, 1, mode="edge")
    edge = np.zeros(classes.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            edge |= pad[dy : dy + classes.shape[0], dx : dx + classes.shape[1]] != classes
    return edge


def write(path: Path, array, transform, crs):
    """Write a (bands, height, width) uint8 array as a DEFLATE GeoTIFF, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
