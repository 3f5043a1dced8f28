"""The user's labels on the raster's grid, window by window, for :mod:`training.chips`.

:class:`GridLabels` serves label polygons (reprojected to the raster's CRS) or a class raster (warped onto the
raster's grid, nearest neighbour) as UInt8 class indices of any window, with the class scheme they define (a
LABELED_AREA's unlabelled pixels as the background class), and the small raster-geometry helpers chips share.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from engine.errors import InvalidInputError
from engine.model_card import NODATA_CLASS as IGNORE_INDEX
from training.labels import (
    DEFAULT_BACKGROUND,
    ClassScheme,
    LabelClass,
    PolygonLabels,
    RasterLabels,
    index_polygons,
    polygon_bounds,
    rasterize_classes,
    rasterize_mask,
)

if TYPE_CHECKING:
    from training.chips import ChipRequest

__all__ = [
    "COARSE_CELLS",
    "GridLabels",
    "bounds_to_window",
    "crs_name",
    "image_bands",
    "row_blocks",
    "union_bounds",
    "valid_pixels",
]

logger = logging.getLogger(__name__)

#: The coarse label map that places the automatic validation cut has at most this many cells along its long side.
COARSE_CELLS = 512


class GridLabels:
    """The labels of one raster, served window by window as class indices on the raster's grid."""

    def __init__(self, request: ChipRequest, dataset: DatasetReader, notes: list[str]) -> None:
        self.dataset = dataset
        self.crs: CRS | None = dataset.crs
        self.bands = request.bands or image_bands(dataset)
        self._vrt: WarpedVRT | None = None
        self._raster_source: DatasetReader | None = None
        self._lookup: dict[int, int] = {}
        self.kind = "polygons" if isinstance(request.labels, PolygonLabels) else "raster"
        values: list[Any]
        if isinstance(request.labels, PolygonLabels):
            labels = self._to_grid_crs(request.labels, notes)
            if not labels.features:
                raise InvalidInputError(f"'{labels.source}' holds no polygons; digitise some labelled polygons first.")
            self.polygons: PolygonLabels | None = labels
            values = labels.values()
            styles: Sequence[LabelClass] = labels.styles
            source, field_name = labels.source, labels.class_field
        else:
            self.polygons = None
            values, styles = self._open_class_raster(request.labels, notes)
            source, field_name = request.labels.source, ""
        self.source = source
        background = None
        self.area: PolygonLabels | None = None
        if request.labeled_area is not None:
            self.area = self._to_grid_crs(request.labeled_area, notes)
            background = (request.background_class or "").strip() or DEFAULT_BACKGROUND
        self.scheme = ClassScheme.from_values(values, styles, background)
        if self.scheme.num_classes < 2:
            only = self.scheme.classes[0].value if self.scheme.classes else "nothing"
            where = f"field '{field_name}' of '{source}'" if field_name else f"'{source}'"
            raise InvalidInputError(
                f"The {where} has only one class value ({only!r}); a model needs at least two classes: digitise "
                "polygons of another class, or add LABELED_AREA polygons so unlabelled pixels inside them become "
                "BACKGROUND_CLASS."
            )
        self.background_index = None if background is None else self.scheme.index_of(background)
        found = {v: self.scheme.index_of(v) for v in self._lookup}
        self._scheme_lookup = {v: i for v, i in found.items() if i is not None}
        self._indexed = None if self.polygons is None else index_polygons(self.polygons, self.scheme)
        self._area_index = None if self.area is None else index_polygons(self.area, None)
        self.conflict_px = 0

    def _to_grid_crs(self, labels: PolygonLabels, notes: list[str]) -> PolygonLabels:
        if (labels.crs is None) != (self.crs is None):
            which = "the raster has no CRS" if self.crs is None else f"'{labels.source}' has no CRS"
            raise InvalidInputError(
                f"Cannot place '{labels.source}' on the raster: {which}; give both layers a CRS (or neither)."
            )
        moved, reprojected = labels.in_crs(self.crs)
        if reprojected:
            notes.append(
                f"'{labels.source}' is in {crs_name(CRS.from_user_input(labels.crs or ''))}; reprojected to the "
                f"raster's {crs_name(self.crs)}."
            )
        return moved

    def _open_class_raster(self, labels: RasterLabels, notes: list[str]) -> tuple[list[int], list[LabelClass]]:
        try:
            source = rasterio.open(labels.path)
        except (rasterio.errors.RasterioError, OSError) as exc:
            raise InvalidInputError(f"Cannot open the class raster '{labels.path}': {exc}.") from exc
        self._raster_source = source
        if not 1 <= labels.band <= source.count:
            raise InvalidInputError(f"Class raster '{labels.source}' has no band {labels.band} (1..{source.count}).")
        same_grid = (source.crs == self.crs and source.transform == self.dataset.transform
                     and source.shape == self.dataset.shape)  # fmt: skip
        if not same_grid:
            if (source.crs is None) != (self.crs is None):
                raise InvalidInputError(
                    f"Cannot place class raster '{labels.source}' on the raster: only one of them has a CRS."
                )
            self._vrt = WarpedVRT(source, crs=self.crs, transform=self.dataset.transform, width=self.dataset.width,
                                  height=self.dataset.height, resampling=Resampling.nearest,
                                  nodata=source.nodata if source.nodata is not None else IGNORE_INDEX)  # fmt: skip
            if source.crs != self.crs:
                notes.append(
                    f"Class raster '{labels.source}' is in {crs_name(source.crs)}; reprojected to the raster's "
                    f"{crs_name(self.crs)} (nearest neighbour)."
                )
        self._label_band = labels.band
        self._label_nodata = source.nodata
        found: set[int] = set()
        for window in row_blocks(self.dataset.height, self.dataset.width, 1024):
            raw = self._read_class_values(window)
            found.update(int(v) for v in np.unique(raw[self._valid_class_values(raw)]))
        self._lookup = {v: i for i, v in enumerate(sorted(found))}
        return sorted(found), category_classes(labels, source, sorted(found))

    def _read_class_values(self, window: Window) -> NDArray[Any]:
        reader = self._vrt if self._vrt is not None else self._raster_source
        if reader is None:
            raise InvalidInputError("No class raster is open; the labels are polygons.")
        data: NDArray[Any] = reader.read(self._label_band, window=window, boundless=False)
        return data

    def _valid_class_values(self, raw: NDArray[Any]) -> NDArray[np.bool_]:
        valid = raw != IGNORE_INDEX
        if self._label_nodata is not None:
            valid &= raw != self._label_nodata
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.isfinite(raw) & (raw == np.round(raw))
        result: NDArray[np.bool_] = valid & (raw >= 0) if np.issubdtype(raw.dtype, np.signedinteger) else valid
        return result

    def labels(self, window: Window) -> NDArray[np.uint8]:
        """Class indices (255 = none) of a window of the raster grid, nodata of the raster included."""
        shape = (int(window.height), int(window.width))
        transform = window_transform(window, self.dataset.transform)
        if self._indexed is not None:
            out, conflicts = rasterize_classes(self._indexed, self.scheme.num_classes, transform, shape)
            self.conflict_px += conflicts
        else:
            raw = self._read_class_values(window)
            valid = self._valid_class_values(raw)
            out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
            for value, index in self._scheme_lookup.items():
                out[valid & (raw == value)] = index
        if self._area_index is not None and self.background_index is not None:
            inside = rasterize_mask(self._area_index, transform, shape)
            out[inside & (out == IGNORE_INDEX)] = self.background_index
        out[~valid_pixels(self.dataset, self.bands, window)] = IGNORE_INDEX
        return out

    def labelled_window(self) -> Window:
        """The smallest window of the raster that holds every label (and LABELED_AREA polygon).

        Raises:
            InvalidInputError: If the labels do not overlap the raster.
        """
        boxes = []
        if self.polygons is not None:
            boxes.append(polygon_bounds(self.polygons))
        if self.area is not None:
            boxes.append(polygon_bounds(self.area))
        if self.polygons is None:
            box = self._raster_label_bounds()
        else:
            box = union_bounds([b for b in boxes if b is not None])
        window = None if box is None else bounds_to_window(box, self.dataset)
        if window is None:
            extent = "nothing" if box is None else ", ".join(f"{v:.6g}" for v in box)
            raster_box = ", ".join(f"{v:.6g}" for v in self.dataset.bounds)
            raise InvalidInputError(
                f"The labels '{self.source}' do not overlap the raster '{Path(self.dataset.name).name}' (labels: "
                f"{extent}; raster: {raster_box}, both in the raster's CRS {crs_name(self.crs)}); digitise the "
                "labels over the raster, or check that both layers have the right CRS."
            )
        return window

    def _raster_label_bounds(self) -> tuple[float, float, float, float] | None:
        rows: list[int] = []
        cols: list[int] = []
        for window in row_blocks(self.dataset.height, self.dataset.width, 1024):
            raw = self._read_class_values(window)
            hit = self._valid_class_values(raw)
            if hit.any():
                r, c = np.nonzero(hit)
                rows += [int(r.min()) + int(window.row_off), int(r.max()) + int(window.row_off)]
                cols += [int(c.min()), int(c.max())]
        if not rows:
            return None
        t = self.dataset.transform
        x0, y0 = t * (min(cols), min(rows))
        x1, y1 = t * (max(cols) + 1, max(rows) + 1)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def coarse_map(self, window: Window) -> tuple[NDArray[np.uint8], int]:
        """Class indices of ``window`` on a grid of at most :data:`COARSE_CELLS` cells a side, and its cell size."""
        factor = max(1, -(-max(int(window.width), int(window.height)) // COARSE_CELLS))
        shape = (-(-int(window.height) // factor), -(-int(window.width) // factor))
        transform = window_transform(window, self.dataset.transform) * Affine.scale(factor)
        if self._indexed is not None:
            out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
            for index in range(self.scheme.num_classes):
                geometries = [g for g, i in self._indexed.shapes if i == index]
                if geometries:
                    burnt = rasterio.features.rasterize(geometries, out_shape=shape, transform=transform, fill=0,
                                                        default_value=1, dtype="uint8", all_touched=True)  # fmt: skip
                    out[(burnt > 0) & (out == IGNORE_INDEX)] = index
        else:
            out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
            for r in range(shape[0]):
                full = self.labels(Window(window.col_off, window.row_off + r * factor, window.width,
                                          min(factor, int(window.height) - r * factor)))  # fmt: skip
                out[r] = full[0, ::factor][: shape[1]]
        if self._area_index is not None and self.background_index is not None and self._indexed is not None:
            geometries = [g for g, _ in self._area_index.shapes]
            inside = rasterio.features.rasterize(geometries, out_shape=shape, transform=transform, fill=0,
                                                 default_value=1, dtype="uint8") > 0  # fmt: skip
            out[inside & (out == IGNORE_INDEX)] = self.background_index
        return out, factor

    def close(self) -> None:
        """Release the class raster."""
        if self._vrt is not None:
            self._vrt.close()
        if self._raster_source is not None:
            self._raster_source.close()


def category_classes(labels: RasterLabels, source: DatasetReader, values: list[int]) -> list[LabelClass]:
    """Names and colours of a class raster's values: the caller's styles, else category names and colour table."""
    if labels.styles:
        return list(labels.styles)
    from engine.evaluation.category_names import read_category_names

    names = read_category_names(Path(labels.path), labels.band) or ()
    try:
        colormap = source.colormap(labels.band)
    except ValueError:  # no colour table
        colormap = {}
    if not names and not colormap:
        return []
    from training.labels import distinct_colours

    spare = iter(distinct_colours(2 * len(values) + 1))
    classes = []
    used: set[str] = set()
    for value in values:
        name = names[value] if value < len(names) and names[value] else str(value)
        rgb = colormap.get(value)
        colour = f"#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x}" if rgb else next(c for c in spare if c not in used)
        used.add(colour)
        classes.append(LabelClass(value, name, colour))
    return classes


def image_bands(dataset: DatasetReader) -> tuple[int, ...]:
    """The raster's image bands: every band but alpha (all of them if that leaves none)."""
    bands = tuple(i for i, ci in enumerate(dataset.colorinterp, start=1) if ci.name.lower() != "alpha")
    return bands or tuple(range(1, dataset.count + 1))


def valid_pixels(dataset: DatasetReader, bands: Sequence[int], window: Window) -> NDArray[np.bool_]:
    """Where every one of ``bands`` has data in ``window`` (GDAL masks)."""
    masks = dataset.read_masks(list(bands), window=window)
    valid: NDArray[np.bool_] = np.all(masks > 0, axis=0)
    return valid


def crs_name(crs: CRS | None) -> str:
    """A CRS in words for messages (its EPSG code where it has one)."""
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_string()[:60] or "a custom CRS")


def union_bounds(boxes: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float] | None:
    """The box around ``boxes`` (xmin, ymin, xmax, ymax), None for none."""
    if not boxes:
        return None
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def bounds_to_window(box: tuple[float, float, float, float], dataset: DatasetReader) -> Window | None:
    """The raster pixels touched by a (left, bottom, right, top) box, clipped to the raster; None if outside."""
    inverse = ~dataset.transform
    xs, ys = [box[0], box[2]], [box[1], box[3]]
    cols, rows = zip(*(inverse * (x, y) for x in xs for y in ys), strict=True)
    col0, col1 = max(0, int(np.floor(min(cols)))), min(dataset.width, int(np.ceil(max(cols))))
    row0, row1 = max(0, int(np.floor(min(rows)))), min(dataset.height, int(np.ceil(max(rows))))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def row_blocks(height: int, width: int, rows: int) -> Iterator[Window]:
    """Full-width windows of ``rows`` rows covering a ``height`` x ``width`` grid, top to bottom."""
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))
