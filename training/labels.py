"""A user's labels: polygons with a class field (or a class raster), the classes they name, and their pixels.

Labels reach training in one of two forms, both independent of QGIS:

* :class:`PolygonLabels`: GeoJSON geometries with a class value each (text or integer), in a stated CRS. The
  command line reads them from a vector file with GDAL/OGR (:func:`read_polygon_file`); the QGIS plugin builds
  them from a layer (already reprojected to the raster's CRS).
* :class:`RasterLabels`: a class raster whose pixel values are the classes, on any grid (warped to the input
  raster's grid with nearest neighbour).

:class:`ClassScheme` maps class values to indices 0..K-1 with a name and colour each: from the label layer's
categorised style when the caller has one, else from the values themselves with a distinct palette.
:func:`rasterize_classes` burns polygons into a window of the raster grid; pixels covered by polygons of two
different classes carry no class (:data:`IGNORE_INDEX`), like every unlabelled pixel.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import CRSError

from engine.errors import InvalidInputError
from engine.model_card import NODATA_CLASS as IGNORE_INDEX

__all__ = [
    "DEFAULT_BACKGROUND",
    "ClassScheme",
    "ClassValue",
    "LabelClass",
    "LabelFeature",
    "LabelSource",
    "PolygonLabels",
    "RasterLabels",
    "distinct_colours",
    "rasterize_classes",
    "rasterize_mask",
    "read_polygon_file",
]

logger = logging.getLogger(__name__)

ClassValue = str | int
#: Class name of the unlabelled pixels inside LABELED_AREA polygons when BACKGROUND_CLASS is not given.
DEFAULT_BACKGROUND = "background"
#: A qualitative palette (Tableau 10 then its light variants): neighbours in class order are easy to tell apart.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip


def distinct_colours(count: int) -> tuple[str, ...]:
    """``count`` distinct ``#rrggbb`` colours: the qualitative palette, then evenly spread hues."""
    colours = list(_PALETTE[:count])
    golden = 0.618033988749895
    for i in range(len(colours), count):
        r, g, b = colorsys.hsv_to_rgb((i * golden) % 1.0, 0.65 if i % 2 else 0.9, 0.85 if i % 3 else 0.65)
        colours.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return tuple(colours)


@dataclass(frozen=True)
class LabelClass:
    """One class of the user's labels.

    Attributes:
        value: The class value as the labels store it (field value, or pixel value of a class raster).
        name: Class name written into the model card.
        color: ``#rrggbb`` colour of the class.
    """

    value: ClassValue
    name: str
    color: str


def normalise_value(value: Any, field_name: str = "class field") -> ClassValue | None:
    """A field value as a class value: text stays text (stripped), integral numbers become int, empty is None.

    Raises:
        InvalidInputError: For fractional numbers (a class field holds categories, not measurements).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return None
        if float(value).is_integer():
            return int(value)
        raise InvalidInputError(
            f"{field_name} holds the fractional value {value}; a class field must hold class names or integer codes."
        )
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class ClassScheme:
    """Class values -> indices 0..K-1, with names and colours (index order = model output order).

    Attributes:
        classes: The classes in index order.
    """

    classes: tuple[LabelClass, ...]

    def __post_init__(self) -> None:
        """Refuse duplicate values and more classes than a UInt8 class raster holds."""
        values = [c.value for c in self.classes]
        if len(set(values)) != len(values):
            raise InvalidInputError(f"Class values {values} repeat; every class needs its own value.")
        if len(self.classes) >= IGNORE_INDEX:
            raise InvalidInputError(f"{len(self.classes)} classes do not fit a class raster (at most 254).")

    @classmethod
    def from_values(
        cls,
        values: Iterable[ClassValue],
        styles: Sequence[LabelClass] = (),
        background: str | None = None,
    ) -> ClassScheme:
        """The scheme of the values that occur in the labels.

        Args:
            values: Class values found in the labels (any order, repeats allowed).
            styles: Classes of the label layer's categorised style, in its order: their names, colours and order
                win for the values they cover; styled values that occur nowhere in the labels are left out.
            background: Class of the unlabelled pixels inside LABELED_AREA polygons: an existing class value
                (as text or integer) or the name of a new class appended at the end; None when there is none.
        """
        present = {_key(v): v for v in values}
        chosen: list[LabelClass] = []
        for style in styles:
            if _key(style.value) in present:
                chosen.append(style)
                present.pop(_key(style.value))
        remaining = sorted(present.values(), key=_sort_key)
        if (
            background is not None
            and not any(_matches(c.value, background) for c in chosen)
            and not any(_matches(v, background) for v in remaining)
        ):
            remaining.append(background)
        used = {c.color.lower() for c in chosen}
        pool = [c for c in distinct_colours(len(chosen) + len(remaining)) if c not in used]
        chosen += [LabelClass(v, str(v), colour) for v, colour in zip(remaining, pool, strict=False)]
        return cls(tuple(chosen))

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in index order."""
        return tuple(c.name for c in self.classes)

    @property
    def colors(self) -> tuple[str, ...]:
        """``#rrggbb`` colours in index order."""
        return tuple(c.color for c in self.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    def index_of(self, value: ClassValue) -> int | None:
        """Index of a class value (text and integer spellings of the same number match), or None."""
        for index, label_class in enumerate(self.classes):
            if _matches(label_class.value, value):
                return index
        return None

    def to_list(self) -> list[dict[str, Any]]:
        """``[{"index", "value", "name", "color"}, ...]`` for manifests and reports."""
        return [{"index": i, "value": c.value, "name": c.name, "color": c.color} for i, c in enumerate(self.classes)]

    @classmethod
    def from_list(cls, entries: Sequence[Mapping[str, Any]]) -> ClassScheme:
        """Inverse of :meth:`to_list`."""
        return cls(tuple(LabelClass(e["value"], str(e["name"]), str(e["color"])) for e in entries))


def _key(value: ClassValue) -> str:
    return str(value).strip().casefold()


def _matches(a: ClassValue, b: ClassValue) -> bool:
    return _key(a) == _key(b)


def _sort_key(value: ClassValue) -> tuple[int, int, str]:
    return (0, int(value), "") if isinstance(value, int) else (1, 0, str(value).casefold())


@dataclass(frozen=True)
class LabelFeature:
    """One polygon of a label (or area) layer.

    Attributes:
        geometry: GeoJSON geometry mapping (Polygon or MultiPolygon; other types are skipped).
        value: Class value; None for area polygons (VALIDATION areas, LABELED_AREA).
    """

    geometry: Mapping[str, Any]
    value: ClassValue | None = None


@dataclass(frozen=True)
class PolygonLabels:
    """Polygons with class values (or plain areas), in one CRS.

    Attributes:
        features: The polygons.
        crs: Their CRS (anything ``rasterio.crs.CRS.from_user_input`` reads: WKT, ``EPSG:4326``); None = the
            raster's CRS (or both without georeference).
        source: How to name the layer in messages (file or layer name).
        class_field: The class field the values came from (for messages); empty for area layers.
        styles: Classes of the layer's categorised style, if it has one (names, colours, order).
    """

    features: tuple[LabelFeature, ...]
    crs: str | None = None
    source: str = "labels"
    class_field: str = ""
    styles: tuple[LabelClass, ...] = ()

    def values(self) -> list[ClassValue]:
        """Every feature's class value (features without one left out)."""
        return [f.value for f in self.features if f.value is not None]

    def in_crs(self, crs: CRS | None) -> tuple[PolygonLabels, bool]:
        """These polygons in ``crs`` (the raster's) and whether they had to be reprojected.

        Raises:
            InvalidInputError: If one side has a CRS and the other does not, or the CRS is unreadable.
        """
        if self.crs is None or crs is None:
            return self, False
        try:
            mine = CRS.from_user_input(self.crs)
        except CRSError as exc:
            raise InvalidInputError(f"The CRS of '{self.source}' ({self.crs[:60]}) is not readable: {exc}.") from exc
        if mine == crs:
            return self, False
        features = tuple(
            LabelFeature(rasterio.warp.transform_geom(mine, crs, dict(f.geometry)), f.value) for f in self.features
        )
        return PolygonLabels(features, crs.to_wkt(), self.source, self.class_field, self.styles), True


@dataclass(frozen=True)
class RasterLabels:
    """A class raster: each pixel value is a class (its nodata, and 255, are no class).

    Attributes:
        path: The raster file.
        band: 1-based band holding the classes.
        source: How to name it in messages.
        styles: Class names/colours (e.g. from the layer's paletted style); else category names and colour table.
    """

    path: Path
    band: int = 1
    source: str = "labels"
    styles: tuple[LabelClass, ...] = ()


LabelSource = PolygonLabels | RasterLabels


def read_polygon_file(path: str | Path, class_field: str | None = None, layer: str | None = None) -> PolygonLabels:
    """Read polygons (and their class field) from a vector file with GDAL/OGR (GeoPackage, GeoJSON, Shapefile...).

    Args:
        path: The vector file.
        class_field: Field holding the class of each polygon; None reads plain areas.
        layer: Layer name inside a multi-layer file; None takes the first layer.

    Raises:
        InvalidInputError: If the file cannot be read, has no such layer or field, or holds no polygon.
    """
    from osgeo import ogr

    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"Label file '{path}' does not exist; give a GeoPackage, GeoJSON or Shapefile.")
    dataset = ogr.Open(str(path))
    if dataset is None:
        raise InvalidInputError(f"GDAL cannot read '{path}' as vector data; give a GeoPackage, GeoJSON or Shapefile.")
    ogr_layer = dataset.GetLayerByName(layer) if layer else dataset.GetLayer(0)
    if ogr_layer is None:
        raise InvalidInputError(f"'{path}' has no layer {layer!r}; name one of its layers or leave it out.")
    definition = ogr_layer.GetLayerDefn()
    fields = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
    if class_field is not None and class_field not in fields:
        raise InvalidInputError(
            f"'{path.name}' has no field '{class_field}'; its fields are {', '.join(fields) or 'none'}: "
            "give the one that holds each polygon's class."
        )
    spatial_ref = ogr_layer.GetSpatialRef()
    crs = spatial_ref.ExportToWkt() if spatial_ref is not None else None
    features: list[LabelFeature] = []
    for feature in ogr_layer:
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            continue
        value = None
        if class_field is not None:
            value = normalise_value(feature.GetField(class_field), f"Field '{class_field}' of '{path.name}'")
            if value is None:
                continue
        features.append(LabelFeature(_geojson(geometry), value))
    polygons = tuple(f for f in features if f.geometry.get("type") in ("Polygon", "MultiPolygon"))
    if not polygons:
        raise InvalidInputError(f"'{path.name}' holds no polygons{' with a class' if class_field else ''}.")
    return PolygonLabels(polygons, crs, path.name, class_field or "")


def _geojson(geometry: Any) -> dict[str, Any]:
    import json

    result: dict[str, Any] = json.loads(geometry.ExportToJson())
    return result


def polygon_bounds(labels: PolygonLabels) -> tuple[float, float, float, float] | None:
    """(left, bottom, right, top) of all polygons, or None when there are none."""
    boxes = [rasterio.features.bounds(dict(f.geometry)) for f in labels.features]
    if not boxes:
        return None
    array = np.asarray(boxes, dtype=np.float64)
    return float(array[:, 0].min()), float(array[:, 1].min()), float(array[:, 2].max()), float(array[:, 3].max())


@dataclass
class _IndexedPolygons:
    """Polygons with their bounds, grouped by class index, for fast per-window rasterisation."""

    shapes: list[tuple[Mapping[str, Any], int]] = field(default_factory=list)
    bounds: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 4)))


def index_polygons(labels: PolygonLabels, scheme: ClassScheme | None) -> _IndexedPolygons:
    """The polygons as (geometry, class index) with their bounds; ``scheme=None`` indexes areas as class 0.

    Raises:
        InvalidInputError: If a polygon's class value is not in the scheme.
    """
    indexed = _IndexedPolygons()
    boxes = []
    for feature in labels.features:
        if scheme is None:
            index = 0
        else:
            found = None if feature.value is None else scheme.index_of(feature.value)
            if found is None:
                raise InvalidInputError(
                    f"'{labels.source}' has a polygon of class {feature.value!r}, which the training labels do not "
                    f"have ({', '.join(map(str, (c.value for c in scheme.classes)))}); label it with one of those."
                )
            index = found
        indexed.shapes.append((feature.geometry, index))
        boxes.append(rasterio.features.bounds(dict(feature.geometry)))
    indexed.bounds = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return indexed


def _in_window(polygons: _IndexedPolygons, transform: Affine, shape: tuple[int, int]) -> list[int]:
    height, width = shape
    xs = [transform.c, transform.c + transform.a * width]
    ys = [transform.f, transform.f + transform.e * height]
    left, right, bottom, top = min(xs), max(xs), min(ys), max(ys)
    b = polygons.bounds
    if b.size == 0:
        return []
    hit = (b[:, 0] <= right) & (b[:, 2] >= left) & (b[:, 1] <= top) & (b[:, 3] >= bottom)
    return [int(i) for i in np.flatnonzero(hit)]


def rasterize_classes(
    polygons: _IndexedPolygons, num_classes: int, transform: Affine, shape: tuple[int, int]
) -> tuple[NDArray[np.uint8], int]:
    """Class indices of a window (``IGNORE_INDEX`` where no polygon, or polygons of different classes, lie).

    Returns:
        ``(labels (H, W) uint8, number of pixels dropped because two classes claimed them)``.
    """
    out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    hits = _in_window(polygons, transform, shape)
    if not hits:
        return out, 0
    claimed = np.zeros(shape, dtype=np.uint8)
    for index in range(num_classes):
        geometries = [polygons.shapes[i][0] for i in hits if polygons.shapes[i][1] == index]
        if not geometries:
            continue
        burnt = rasterio.features.rasterize(
            geometries, out_shape=shape, transform=transform, fill=0, default_value=1, dtype="uint8"
        ).astype(bool)
        out[burnt] = index
        claimed += burnt
    conflict = claimed > 1
    out[conflict] = IGNORE_INDEX
    return out, int(conflict.sum())


def rasterize_mask(polygons: _IndexedPolygons, transform: Affine, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Pixels of a window covered by any of the polygons."""
    hits = _in_window(polygons, transform, shape)
    if not hits:
        return np.zeros(shape, dtype=bool)
    burnt = rasterio.features.rasterize(
        [polygons.shapes[i][0] for i in hits], out_shape=shape, transform=transform, fill=0, default_value=1,
        dtype="uint8",
    )  # fmt: skip
    mask: NDArray[np.bool_] = burnt.astype(bool)
    return mask
