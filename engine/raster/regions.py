"""Processing regions: the EXTENT rectangle and MASK polygons, rasterised per tile window.

A pixel is inside when its centre lies inside the extent (if any) and inside at least one mask polygon (if any).
Geometries are GeoJSON mappings in the raster's CRS; each tile only rasterises those whose bounding box meets it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from ..errors import InvalidInputError

Bounds = tuple[float, float, float, float]
_POLYGONAL = frozenset({"Polygon", "MultiPolygon"})


@dataclass(frozen=True)
class RegionFilter:
    """Where processing is wanted, in raster CRS units.

    Attributes:
        extent: ``(xmin, ymin, xmax, ymax)``, or None for no extent limit.
        polygons: Polygon / MultiPolygon GeoJSON geometries paired with their bounds; empty for no mask.
    """

    extent: Bounds | None = None
    polygons: tuple[tuple[Mapping[str, Any], Bounds], ...] = ()

    @classmethod
    def create(
        cls,
        extent: Sequence[float] | None,
        mask_geometries: Sequence[Mapping[str, Any]] | None,
        raster_bounds: Sequence[float],
    ) -> RegionFilter:
        """Validate the extent and mask geometries against the raster's bounds.

        Raises:
            InvalidInputError: If the extent is malformed, a geometry is not a GeoJSON polygon, or the extent /
                mask misses the raster; the message says how to fix it.
        """
        raster = _as_bounds(raster_bounds)
        box = None if extent is None else _check_extent(extent, raster)
        polygons: list[tuple[Mapping[str, Any], Bounds]] = []
        if mask_geometries is not None:
            for geometry in mask_geometries:
                polygons.extend((part, _geometry_bounds(part)) for part in _polygon_parts(geometry))
            if not polygons:
                raise InvalidInputError("MASK holds no polygons; give a polygon layer or leave MASK empty.")
            if not any(_overlaps(b, raster) for _, b in polygons):
                raise InvalidInputError(
                    f"MASK polygons do not overlap the raster (bounds {_fmt(raster)}); are they in the raster's CRS? "
                    "Reproject the mask layer or choose another one."
                )
        return cls(extent=box, polygons=tuple(polygons))

    @property
    def unlimited(self) -> bool:
        """True when neither an extent nor a mask limits processing."""
        return self.extent is None and not self.polygons

    def inside(self, window: Window, transform: Affine) -> NDArray[np.bool_] | None:
        """Mask (h, w) of the window's pixels whose centres are inside the region; None when all are.

        Args:
            window: Pixel window of the grid described by ``transform``.
            transform: The grid's affine transform.
        """
        if self.unlimited:
            return None
        shape = (round(window.height), round(window.width))
        tile = _as_bounds(window_bounds(window, transform))
        tile_transform = transform * Affine.translation(window.col_off, window.row_off)
        result = np.ones(shape, dtype=bool)
        if self.extent is not None:
            if _contains(self.extent, tile):
                pass  # the whole tile is inside: nothing to rasterise
            elif not _overlaps(self.extent, tile):
                return np.zeros(shape, dtype=bool)
            else:
                result &= _burn([_box(self.extent)], shape, tile_transform)
        if self.polygons:
            touching = [geometry for geometry, b in self.polygons if _overlaps(b, tile)]
            if not touching:
                return np.zeros(shape, dtype=bool)
            result &= _burn(touching, shape, tile_transform)
        return result


def _burn(geometries: Sequence[Mapping[str, Any]], shape: tuple[int, int], transform: Affine) -> NDArray[np.bool_]:
    # all_touched=False: a pixel is inside when its centre is, the usual GIS rule for clipping rasters.
    burned = rasterize(geometries, out_shape=shape, transform=transform, fill=0, default_value=1, dtype="uint8")
    return np.asarray(burned, dtype=bool)


def _check_extent(extent: Sequence[float], raster: Bounds) -> Bounds:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"EXTENT must be four numbers (xmin, ymin, xmax, ymax) in the raster's CRS, got {extent!r}."
        ) from exc
    if not (np.isfinite([xmin, ymin, xmax, ymax]).all() and xmin < xmax and ymin < ymax):
        raise InvalidInputError(
            f"EXTENT {extent!r} is empty or inverted; give xmin < xmax and ymin < ymax in the raster's CRS."
        )
    box = (xmin, ymin, xmax, ymax)
    if not _overlaps(box, raster):
        raise InvalidInputError(
            f"EXTENT {_fmt(box)} does not overlap the raster (bounds {_fmt(raster)}); is it in the raster's CRS? "
            "Choose an extent inside the raster."
        )
    return box


def _polygon_parts(geometry: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Polygonal parts of a GeoJSON geometry, Feature or GeometryCollection."""
    if not isinstance(geometry, Mapping) or "type" not in geometry:
        raise InvalidInputError(
            f"MASK geometry must be a GeoJSON mapping with a 'type', got {type(geometry).__name__}."
        )
    kind = geometry["type"]
    if kind == "Feature":
        if geometry.get("geometry") is not None:
            yield from _polygon_parts(geometry["geometry"])
    elif kind == "GeometryCollection":
        for part in geometry.get("geometries", ()):
            yield from _polygon_parts(part)
    elif kind in _POLYGONAL:
        if geometry.get("coordinates"):
            yield geometry
    else:
        raise InvalidInputError(f"MASK geometries must be polygons, got a {kind}; use a polygon layer.")


def _geometry_bounds(geometry: Mapping[str, Any]) -> Bounds:
    coords = np.asarray([xy[:2] for xy in _positions(geometry["coordinates"])], dtype=np.float64)
    if coords.size == 0:
        raise InvalidInputError("MASK holds a polygon without coordinates; fix or remove it.")
    return float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())


def _positions(coordinates: Any) -> Iterator[Sequence[float]]:
    """Every (x, y[, z]) position in a nested GeoJSON coordinate array."""
    if len(coordinates) and isinstance(coordinates[0], int | float):
        yield coordinates
        return
    for item in coordinates:
        yield from _positions(item)


def _as_bounds(values: Sequence[float]) -> Bounds:
    left, bottom, right, top = (float(v) for v in values)
    # Bounds of rasters with a positive y pixel size (no georeference) come with bottom > top.
    return min(left, right), min(bottom, top), max(left, right), max(bottom, top)


def _overlaps(a: Bounds, b: Bounds) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _contains(outer: Bounds, inner: Bounds) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _box(b: Bounds) -> dict[str, Any]:
    xmin, ymin, xmax, ymax = b
    ring = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)]
    return {"type": "Polygon", "coordinates": [ring]}


def _fmt(b: Bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"
