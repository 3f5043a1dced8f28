"""Training chips from a raster and the user's labels: ``python -m training.chips --raster R --labels L -o DIR``.

The labelled part of the raster is cut into square chips (``tile_size_px``, neighbours sharing ``overlap_px``);
a chip is kept when at least one of its pixels has a class. Each chip is a pair of GeoTIFFs on the raster's own
grid: ``images/<id>.tif`` (the raster's bands and data type, its nodata) and ``labels/<id>.tif`` (UInt8 class
indices 0..K-1, 255 = no class, with a colour table), listed with the classes, bands and resolution in
``manifest.json``. ``bicorseg:exporttrainingdata`` writes exactly these chips, and ``training.finetune`` trains on
them (through the ``chips`` dataset), so chips exported once can also be trained on elsewhere.

Which labelled pixels validate rather than train (each chip is one or the other, never both):

* VALIDATION polygons with the class field: their pixels are validation labels, and training labels under them
  are dropped;
* VALIDATION polygons without it: areas; the labels inside them validate, the rest train;
* otherwise a spatially separate share (``validation_share``, 20 %) is held out: a straight cut across the
  labelled area, on the side that leaves the most classes on both sides; a gap of an eighth of a chip between the
  two sides carries no label, so no polygon is trained on and validated on at the same spot.

Pixels outside every label polygon carry no class (the loss ignores them: sparse digitising is the normal case),
except inside LABELED_AREA polygons, where they are the background class. Pixels where the raster is nodata carry no
class either. Writing goes to a hidden folder beside the target, renamed into place at the end: a failed or
canceled run leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

from engine.errors import CanceledError, InvalidInputError, InvalidRasterError, OutputPathError
from engine.inference.tiling import window_offsets
from engine.model_card import NODATA_CLASS as IGNORE_INDEX
from engine.progress import NullProgress, ProgressReporter
from engine.raster.reader import raster_gsd_m
from training.labels import (
    DEFAULT_BACKGROUND,
    ClassScheme,
    LabelClass,
    LabelSource,
    PolygonLabels,
    RasterLabels,
    index_polygons,
    polygon_bounds,
    rasterize_classes,
    rasterize_mask,
    read_polygon_file,
)

__all__ = [
    "DEFAULT_VALIDATION_SHARE",
    "MANIFEST_NAME",
    "ChipRequest",
    "ChipSet",
    "main",
    "read_label_source",
    "write_chips",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "bicorseg-training-chips"
MANIFEST_SCHEMA = 1
#: Share of the labelled pixels held out for validation when no VALIDATION polygons are given.
DEFAULT_VALIDATION_SHARE = 0.2
#: The coarse label map that places the automatic validation cut has at most this many cells along its long side.
_COARSE_CELLS = 512
_RASTER_LABEL_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".png")


@dataclass(frozen=True)
class ChipRequest:
    """What to cut into chips.

    Attributes:
        raster: The input raster.
        labels: Polygons with classes, or a class raster.
        tile_size_px: Chip edge in pixels.
        overlap_px: Pixels shared by neighbouring training chips (validation chips never overlap).
        validation: VALIDATION polygons: with class values (validation labels) or without (validation areas).
        labeled_area: LABELED_AREA polygons: unlabelled pixels inside them are ``background_class``.
        background_class: Existing class value or new class name for those pixels (default ``background``).
        validation_share: Share of labelled pixels held out automatically when ``validation`` is None (0 = none).
        bands: 1-based raster bands to write, in this order; None = every band but alpha.
        band_names: Names of those bands (default: colour interpretation or description, else ``band_<i>``).
    """

    raster: Path
    labels: LabelSource
    tile_size_px: int = 256
    overlap_px: int = 32
    validation: PolygonLabels | None = None
    labeled_area: PolygonLabels | None = None
    background_class: str | None = None
    validation_share: float = DEFAULT_VALIDATION_SHARE
    bands: tuple[int, ...] | None = None
    band_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check the tiling and the share."""
        if self.tile_size_px < 16:
            raise InvalidInputError(
                f"TILE_SIZE {self.tile_size_px} is too small; use 16 pixels or more (256 is usual)."
            )
        if not 0 <= self.overlap_px < self.tile_size_px:
            raise InvalidInputError(
                f"OVERLAP {self.overlap_px} must be at least 0 and below TILE_SIZE {self.tile_size_px}."
            )
        if not 0 <= self.validation_share < 1:
            raise InvalidInputError(f"The validation share {self.validation_share} must be in [0, 1), e.g. 0.2.")


@dataclass(frozen=True)
class ChipSet:
    """Chips written by :func:`write_chips`.

    Attributes:
        folder: The chip folder (``manifest.json``, ``images/``, ``labels/``).
        scheme: Class values, names and colours in index order.
        band_names: Names of the chip images' bands.
        gsd_m: The raster's pixel size in metres, None where unknown.
        train_class_px: Labelled training pixels per class.
        val_class_px: Labelled validation pixels per class.
        train_chips: Number of training chips.
        val_chips: Number of validation chips.
        validation: One sentence on how the validation pixels were chosen.
        notes: What the user should be told (reprojection, dropped pixels, classes missing on one side).
        manifest: The manifest as written.
    """

    folder: Path
    scheme: ClassScheme
    band_names: tuple[str, ...]
    gsd_m: float | None
    train_class_px: tuple[int, ...]
    val_class_px: tuple[int, ...]
    train_chips: int
    val_chips: int
    validation: str
    notes: tuple[str, ...] = ()
    manifest: dict[str, Any] = field(default_factory=dict)


# --- labels on the raster grid --------------------------------------------------------------------------------


class _GridLabels:
    """The labels of one raster, served window by window as class indices on the raster's grid."""

    def __init__(self, request: ChipRequest, dataset: DatasetReader, notes: list[str]) -> None:
        self.dataset = dataset
        self.crs: CRS | None = dataset.crs
        self.bands = request.bands or _image_bands(dataset)
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
                f"'{labels.source}' is in {_crs_name(CRS.from_user_input(labels.crs or ''))}; reprojected to the "
                f"raster's {_crs_name(self.crs)}."
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
                    f"Class raster '{labels.source}' is in {_crs_name(source.crs)}; reprojected to the raster's "
                    f"{_crs_name(self.crs)} (nearest neighbour)."
                )
        self._label_band = labels.band
        self._label_nodata = source.nodata
        found: set[int] = set()
        for window in _row_blocks(self.dataset.height, self.dataset.width, 1024):
            raw = self._read_class_values(window)
            found.update(int(v) for v in np.unique(raw[self._valid_class_values(raw)]))
        self._lookup = {v: i for i, v in enumerate(sorted(found))}
        return sorted(found), _category_classes(labels, source, sorted(found))

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
        out[~_valid_pixels(self.dataset, self.bands, window)] = IGNORE_INDEX
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
            box = _union([b for b in boxes if b is not None])
        window = None if box is None else _bounds_to_window(box, self.dataset)
        if window is None:
            extent = "nothing" if box is None else ", ".join(f"{v:.6g}" for v in box)
            raster_box = ", ".join(f"{v:.6g}" for v in self.dataset.bounds)
            raise InvalidInputError(
                f"The labels '{self.source}' do not overlap the raster '{Path(self.dataset.name).name}' (labels: "
                f"{extent}; raster: {raster_box}, both in the raster's CRS {_crs_name(self.crs)}); digitise the "
                "labels over the raster, or check that both layers have the right CRS."
            )
        return window

    def _raster_label_bounds(self) -> tuple[float, float, float, float] | None:
        rows: list[int] = []
        cols: list[int] = []
        for window in _row_blocks(self.dataset.height, self.dataset.width, 1024):
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
        """Class indices of ``window`` on a grid of at most :data:`_COARSE_CELLS` cells a side, and its cell size."""
        factor = max(1, -(-max(int(window.width), int(window.height)) // _COARSE_CELLS))
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


def _category_classes(labels: RasterLabels, source: DatasetReader, values: list[int]) -> list[LabelClass]:
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


# --- which labelled pixels validate ---------------------------------------------------------------------------


class _Split:
    """Splits a window's labels into (training labels, validation labels)."""

    description = ""
    mode = "none"

    def split(self, window: Window, labels: NDArray[np.uint8], grid: _GridLabels) -> tuple[NDArray[np.uint8], ...]:
        return labels, np.full_like(labels, IGNORE_INDEX)

    def validation_window(self, labelled: Window) -> Window | None:
        return None


class _PolygonSplit(_Split):
    """VALIDATION polygons: with classes (validation labels) or without (validation areas)."""

    def __init__(self, polygons: PolygonLabels, grid: _GridLabels, notes: list[str]) -> None:
        self.polygons = grid._to_grid_crs(polygons, notes)
        self.with_classes = all(f.value is not None for f in self.polygons.features) and bool(self.polygons.class_field)
        self._indexed = index_polygons(self.polygons, grid.scheme if self.with_classes else None)
        self._grid = grid
        self.mode = "polygons" if self.with_classes else "areas"
        count = len(self.polygons.features)
        self.description = (
            f"{count} VALIDATION polygon(s) of '{self.polygons.source}' with their own classes"
            if self.with_classes
            else f"the labels inside {count} VALIDATION area polygon(s) of '{self.polygons.source}'"
        )

    def split(self, window: Window, labels: NDArray[np.uint8], grid: _GridLabels) -> tuple[NDArray[np.uint8], ...]:
        transform = window_transform(window, grid.dataset.transform)
        shape = labels.shape
        inside = rasterize_mask(self._indexed, transform, (int(shape[0]), int(shape[1])))
        train = np.where(inside, IGNORE_INDEX, labels).astype(np.uint8)
        if self.with_classes:
            val, _ = rasterize_classes(self._indexed, grid.scheme.num_classes, transform, (shape[0], shape[1]))
            val[~_valid_pixels(grid.dataset, grid.bands, window)] = IGNORE_INDEX
        else:
            val = np.where(inside, labels, IGNORE_INDEX).astype(np.uint8)
        return train, val

    def validation_window(self, labelled: Window) -> Window | None:
        box = polygon_bounds(self.polygons)
        return None if box is None else _bounds_to_window(box, self._grid.dataset)


class _CutSplit(_Split):
    """A straight cut: the pixels beyond ``position`` validate, those more than ``gap_px`` before it train."""

    mode = "cut"

    def __init__(self, axis: str, position: int, after: bool, gap_px: int, share: float, labelled: Window) -> None:
        self.axis, self.position, self.after, self.gap_px = axis, position, after, gap_px
        side = {("col", True): "east", ("col", False): "west", ("row", True): "south", ("row", False): "north"}[
            (axis, after)
        ]
        self.description = (
            f"the {side}ern {share:.0%} of the labelled pixels (cut at {axis} {position} of the raster grid, "
            f"{gap_px} px gap without labels), held out automatically"
        )
        self._labelled = labelled

    def split(self, window: Window, labels: NDArray[np.uint8], grid: _GridLabels) -> tuple[NDArray[np.uint8], ...]:
        if self.axis == "col":
            coords = int(window.col_off) + np.arange(labels.shape[1])[None, :]
        else:
            coords = int(window.row_off) + np.arange(labels.shape[0])[:, None]
        if self.after:
            is_val, is_train = coords >= self.position, coords < self.position - self.gap_px
        else:
            is_val, is_train = coords < self.position, coords >= self.position + self.gap_px
        train = np.where(np.broadcast_to(is_train, labels.shape), labels, IGNORE_INDEX).astype(np.uint8)
        val = np.where(np.broadcast_to(is_val, labels.shape), labels, IGNORE_INDEX).astype(np.uint8)
        return train, val

    def validation_window(self, labelled: Window) -> Window | None:
        col0, row0 = int(labelled.col_off), int(labelled.row_off)
        col1, row1 = col0 + int(labelled.width), row0 + int(labelled.height)
        if self.axis == "col":
            col0, col1 = (max(col0, self.position), col1) if self.after else (col0, min(col1, self.position))
        else:
            row0, row1 = (max(row0, self.position), row1) if self.after else (row0, min(row1, self.position))
        if col1 <= col0 or row1 <= row0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)


def choose_cut(coarse: NDArray[np.uint8], num_classes: int, share: float) -> tuple[str, int, bool, float]:
    """The straight cut of a coarse label map that holds out about ``share`` of its labelled cells.

    Of the four sides (east, west, south, north), the one that leaves the most classes with cells on both sides
    wins; ties go to the share closest to ``share``.

    Returns:
        ``(axis "col" or "row", cut position in cells, validation after the position, share held out)``.
    """
    best: tuple[tuple[int, float], tuple[str, int, bool, float]] | None = None
    labelled = coarse != IGNORE_INDEX
    total = int(labelled.sum())
    if total == 0:
        raise InvalidInputError(
            "No labelled pixel in the validation share: the labels cover no pixel of the raster; digitise larger "
            "polygons, or give VALIDATION polygons."
        )
    for axis, along in (("col", 0), ("row", 1)):
        # per-class cell counts along the axis: (K, length)
        counts = np.stack([(coarse == k).sum(axis=along) for k in range(num_classes)])
        length = counts.shape[1]
        for after in (True, False):
            ordered = counts if after else counts[:, ::-1]
            beyond = np.cumsum(ordered[:, ::-1].sum(axis=0))[::-1]  # labelled cells at or beyond index i
            candidates = [i for i in range(1, length) if beyond[i] > 0]
            if not candidates:
                continue
            i = min(candidates, key=lambda j: abs(beyond[j] / total - share))
            held = float(beyond[i] / total)
            both = sum(1 for k in range(num_classes) if ordered[k, :i].sum() > 0 and ordered[k, i:].sum() > 0)
            position = i if after else length - i
            score = (both, -abs(held - share))
            if best is None or score > best[0]:
                best = (score, (axis, position, after, held))
    if best is None:
        raise InvalidInputError(
            "No labelled pixel in the validation share: the labels are too small or narrow to hold part of them "
            "out; give VALIDATION polygons, or label a larger area."
        )
    return best[1]


# --- the chips ------------------------------------------------------------------------------------------------


def write_chips(request: ChipRequest, folder: Path, progress: ProgressReporter | None = None) -> ChipSet:
    """Cut the labelled part of ``request.raster`` into chips in ``folder`` (new, or empty).

    Raises:
        InvalidInputError: For labels that do not overlap the raster, fewer than two classes, no labelled pixel in
            the validation share, and the other input problems the module docstring names.
        OutputPathError: If ``folder`` is not empty or cannot be written.
        CanceledError: If ``progress`` says the user canceled (nothing is left behind).
    """
    progress = progress or NullProgress()
    folder = Path(folder)
    _check_output_folder(folder)
    raster = Path(request.raster)
    if not raster.is_file():
        raise InvalidRasterError(f"Input raster '{raster}' does not exist; check the path.")
    try:
        dataset = rasterio.open(raster)
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise InvalidRasterError(
            f"Cannot open '{raster}' as a raster ({exc}); give a GeoTIFF or other GDAL raster."
        ) from exc
    notes: list[str] = []
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    grid: _GridLabels | None = None
    try:
        grid = _GridLabels(request, dataset, notes)
        bands = grid.bands
        band_names = request.band_names or _band_names(dataset, bands)
        labelled = grid.labelled_window()
        split = _make_split(request, grid, labelled, notes)
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "images").mkdir(parents=True)
        (partial / "labels").mkdir()
        writer = _ChipWriter(partial, dataset, bands, band_names, grid.scheme)
        train_windows = list(_grid_windows(labelled, dataset, request.tile_size_px, request.overlap_px))
        val_area = split.validation_window(labelled)
        val_windows = [] if val_area is None else list(_grid_windows(val_area, dataset, request.tile_size_px, 0))
        total = max(len(train_windows) + len(val_windows), 1)
        done = 0
        for split_name, windows in (("train", train_windows), ("val", val_windows)):
            for window in windows:
                if progress.is_canceled():
                    raise CanceledError("Canceled; no chips were written.")
                labels = grid.labels(window)
                train, val = split.split(window, labels, grid)
                writer.add(split_name, window, train if split_name == "train" else val)
                done += 1
                progress.set_progress(done / total)
        chip_set = _finish(request, grid, split, writer, band_names, labelled, notes, folder)
        (partial / MANIFEST_NAME).write_text(json.dumps(chip_set.manifest, indent=1), encoding="utf-8")
        _move_into_place(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if grid is not None:
            grid.close()
        dataset.close()
    for note in chip_set.notes:
        logger.warning("%s", note)
    return chip_set


def _make_split(request: ChipRequest, grid: _GridLabels, labelled: Window, notes: list[str]) -> _Split:
    if request.validation is not None:
        if not request.validation.features:
            raise InvalidInputError(
                f"VALIDATION '{request.validation.source}' holds no polygons; draw some or leave it empty."
            )
        return _PolygonSplit(request.validation, grid, notes)
    if request.validation_share == 0:
        return _Split()
    coarse, factor = grid.coarse_map(labelled)
    axis, cells, after, held = choose_cut(coarse, grid.scheme.num_classes, request.validation_share)
    origin = int(labelled.col_off) if axis == "col" else int(labelled.row_off)
    gap = max(1, request.tile_size_px // 8)
    return _CutSplit(axis, origin + cells * factor, after, gap, held, labelled)


def _finish(
    request: ChipRequest,
    grid: _GridLabels,
    split: _Split,
    writer: _ChipWriter,
    band_names: tuple[str, ...],
    labelled: Window,
    notes: list[str],
    folder: Path,
) -> ChipSet:
    scheme = grid.scheme
    train_px, val_px = writer.class_px("train"), writer.class_px("val")
    if sum(train_px) == 0:
        raise InvalidInputError(
            f"No labelled pixel is left for training outside the validation share ({split.description}); label "
            "more, or draw VALIDATION polygons over a smaller part."
        )
    if split.mode != "none" and sum(val_px) == 0:
        raise InvalidInputError(
            f"No labelled pixel in the validation share ({split.description}); draw VALIDATION polygons over "
            "labelled pixels (with the class field, or as areas over LABELS polygons), or leave VALIDATION empty."
        )
    if sum(1 for n in train_px if n) < 2:
        present = [scheme.names[k] for k, n in enumerate(train_px) if n]
        raise InvalidInputError(
            f"Outside the validation share only class {present} has labelled pixels; a model needs two: label other "
            "classes there too, or move VALIDATION."
        )
    missing_train = [scheme.names[k] for k, n in enumerate(train_px) if n == 0]
    if missing_train:
        notes.append(f"Class(es) {', '.join(missing_train)} have labelled pixels only in the validation share; the "
                     "model cannot learn them: label them elsewhere too.")  # fmt: skip
    missing_val = [scheme.names[k] for k, n in enumerate(val_px) if n == 0]
    if split.mode != "none" and missing_val:
        notes.append(f"Class(es) {', '.join(missing_val)} have no labelled pixel in the validation share; their IoU "
                     "is not measured.")  # fmt: skip
    if grid.conflict_px:
        notes.append(f"{grid.conflict_px} pixel(s) under polygons of two different classes carry no class.")
    dataset = grid.dataset
    gsd = raster_gsd_m(dataset)
    manifest: dict[str, Any] = {
        "kind": MANIFEST_KIND,
        "schema_version": MANIFEST_SCHEMA,
        "raster": str(Path(request.raster).resolve()),
        "raster_size_px": [dataset.width, dataset.height],
        "crs": dataset.crs.to_wkt() if dataset.crs is not None else None,
        "transform": list(dataset.transform)[:6],
        "gsd_m": gsd,
        "bands": list(grid.bands),
        "band_names": list(band_names),
        "dtype": dataset.dtypes[grid.bands[0] - 1],
        "nodata": dataset.nodata,
        "tile_size_px": request.tile_size_px,
        "overlap_px": request.overlap_px,
        "classes": scheme.to_list(),
        "ignore_index": IGNORE_INDEX,
        "labels": {
            "source": grid.source,
            "kind": grid.kind,
            "class_field": grid.polygons.class_field if grid.polygons is not None else "",
        },
        "labeled_area": None
        if grid.area is None
        else {"source": grid.area.source, "background_class": scheme.names[grid.background_index or 0]},
        "labelled_window": [int(labelled.col_off), int(labelled.row_off), int(labelled.width), int(labelled.height)],
        "validation": {"mode": split.mode, "description": split.description},
        "notes": list(notes),
        "summary": {
            "train": {"chips": writer.count("train"), "class_px": list(train_px)},
            "val": {"chips": writer.count("val"), "class_px": list(val_px)},
        },
        "chips": writer.entries,
    }
    return ChipSet(
        folder=folder,
        scheme=scheme,
        band_names=band_names,
        gsd_m=gsd,
        train_class_px=train_px,
        val_class_px=val_px,
        train_chips=writer.count("train"),
        val_chips=writer.count("val"),
        validation=split.description or "no validation share",
        notes=tuple(notes),
        manifest=manifest,
    )


class _ChipWriter:
    """Writes image/label GeoTIFF pairs and keeps the manifest entries."""

    def __init__(
        self, folder: Path, dataset: DatasetReader, bands: tuple[int, ...], names: tuple[str, ...], scheme: ClassScheme
    ) -> None:
        self.folder, self.dataset, self.bands, self.names, self.scheme = folder, dataset, bands, names, scheme
        self.entries: list[dict[str, Any]] = []
        self._colormap = {i: (*_rgb(c), 255) for i, c in enumerate(scheme.colors)}

    def add(self, split: str, window: Window, labels: NDArray[np.uint8]) -> None:
        labelled = labels != IGNORE_INDEX
        if not labelled.any():
            return
        chip_id = f"{split}_{self.count(split) + 1:05d}"
        transform = window_transform(window, self.dataset.transform)
        common = {"driver": "GTiff", "width": int(window.width), "height": int(window.height), "crs": self.dataset.crs,
                  "transform": transform, "compress": "deflate"}  # fmt: skip
        image = self.dataset.read(list(self.bands), window=window)
        image_path = Path("images") / f"{chip_id}.tif"
        with rasterio.open(self.folder / image_path, "w", count=len(self.bands), dtype=image.dtype,
                           nodata=self.dataset.nodata, **common) as dst:  # fmt: skip
            dst.write(image)
            for band, name in enumerate(self.names, start=1):
                dst.set_band_description(band, name)
        label_path = Path("labels") / f"{chip_id}.tif"
        with rasterio.open(self.folder / label_path, "w", count=1, dtype="uint8", nodata=IGNORE_INDEX, **common) as dst:
            dst.write_colormap(1, self._colormap)
            dst.write(labels, 1)
        class_px = np.bincount(labels[labelled], minlength=self.scheme.num_classes)[: self.scheme.num_classes]
        self.entries.append({
            "id": chip_id, "split": split, "image": image_path.as_posix(), "label": label_path.as_posix(),
            "window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
            "labelled_px": int(labelled.sum()), "class_px": [int(n) for n in class_px],
        })  # fmt: skip

    def count(self, split: str) -> int:
        return sum(1 for e in self.entries if e["split"] == split)

    def class_px(self, split: str) -> tuple[int, ...]:
        total = np.zeros(self.scheme.num_classes, dtype=np.int64)
        for entry in self.entries:
            if entry["split"] == split:
                total += np.asarray(entry["class_px"], dtype=np.int64)
        return tuple(int(n) for n in total)


# --- small helpers --------------------------------------------------------------------------------------------


def _image_bands(dataset: DatasetReader) -> tuple[int, ...]:
    bands = tuple(i for i, ci in enumerate(dataset.colorinterp, start=1) if ci.name.lower() != "alpha")
    return bands or tuple(range(1, dataset.count + 1))


def _band_names(dataset: DatasetReader, bands: Sequence[int]) -> tuple[str, ...]:
    names = []
    for band in bands:
        interp = dataset.colorinterp[band - 1].name.lower()
        description = (dataset.descriptions[band - 1] or "").strip()
        if interp not in ("undefined", "gray", "grey", "palette", "alpha"):
            names.append(interp)
        elif description:
            names.append(description)
        else:
            names.append(f"band_{band}")
    return tuple(names)


def _valid_pixels(dataset: DatasetReader, bands: Sequence[int], window: Window) -> NDArray[np.bool_]:
    masks = dataset.read_masks(list(bands), window=window)
    valid: NDArray[np.bool_] = np.all(masks > 0, axis=0)
    return valid


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_string()[:60] or "a custom CRS")


def _union(boxes: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float] | None:
    if not boxes:
        return None
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _bounds_to_window(box: tuple[float, float, float, float], dataset: DatasetReader) -> Window | None:
    """The raster pixels touched by a (left, bottom, right, top) box, clipped to the raster; None if outside."""
    inverse = ~dataset.transform
    xs, ys = [box[0], box[2]], [box[1], box[3]]
    cols, rows = zip(*(inverse * (x, y) for x in xs for y in ys), strict=True)
    col0, col1 = max(0, int(np.floor(min(cols)))), min(dataset.width, int(np.ceil(max(cols))))
    row0, row1 = max(0, int(np.floor(min(rows)))), min(dataset.height, int(np.ceil(max(rows))))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _grid_windows(area: Window, dataset: DatasetReader, tile_px: int, overlap_px: int) -> Iterator[Window]:
    """Chip windows over ``area``, whole chips shifted inside the raster wherever it is large enough."""
    stride = tile_px - overlap_px

    def offsets(start: int, length: int, limit: int) -> list[int]:
        size = min(tile_px, limit)
        origins = [start + o for o in window_offsets(length, tile_px, stride)]
        return sorted({min(max(o, 0), limit - size) for o in origins})

    width, height = min(tile_px, dataset.width), min(tile_px, dataset.height)
    for row in offsets(int(area.row_off), int(area.height), dataset.height):
        for col in offsets(int(area.col_off), int(area.width), dataset.width):
            yield Window(col, row, width, height)


def _row_blocks(height: int, width: int, rows: int) -> Iterator[Window]:
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))


def _check_output_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputPathError(f"Output folder '{folder}' is not empty; choose a new or empty folder for the chips.")
    parent = folder.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise OutputPathError(f"Cannot create '{parent}' ({exc}); choose a writable folder.") from exc


def _move_into_place(partial: Path, folder: Path) -> None:
    if folder.exists():
        folder.rmdir()  # checked empty before the run
    os.replace(partial, folder)


def read_label_source(path: str | Path, class_field: str | None) -> LabelSource:
    """Labels from a file: a class raster (GeoTIFF, VRT, ...) or a vector file with ``class_field``.

    Raises:
        InvalidInputError: If a vector file is given without a class field, or the file cannot be read.
    """
    path = Path(path)
    if path.suffix.lower() in _RASTER_LABEL_SUFFIXES:
        if not path.is_file():
            raise InvalidInputError(f"Class raster '{path}' does not exist; check the path.")
        return RasterLabels(path, source=path.name)
    if not class_field:
        raise InvalidInputError(f"'{path.name}' is a vector file: name its class field with --class-field.")
    return read_polygon_file(path, class_field)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.chips", description=__doc__.splitlines()[0])
    parser.add_argument("--raster", required=True, type=Path, help="input raster (GeoTIFF, VRT, ...)")
    parser.add_argument("--labels", required=True, type=Path, help="label polygons (GeoPackage, ...) or class raster")
    parser.add_argument("--class-field", default=None, help="field of --labels holding each polygon's class")
    parser.add_argument("-o", "--output", required=True, type=Path, help="new (or empty) folder for the chips")
    parser.add_argument("--tile-size", type=int, default=256, help="chip edge in pixels (default 256)")
    parser.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring chips (default 32)")
    parser.add_argument("--validation", type=Path, default=None,
                        help="validation polygons: with --class-field (labels) or without it (areas)")  # fmt: skip
    parser.add_argument("--validation-share", type=float, default=DEFAULT_VALIDATION_SHARE,
                        help="share held out automatically without --validation (default 0.2; 0 = none)")  # fmt: skip
    parser.add_argument("--labeled-area", type=Path, default=None,
                        help="polygons inside which unlabelled pixels are --background-class")  # fmt: skip
    parser.add_argument("--background-class", default=None, help="class of those pixels (default 'background')")
    return parser.parse_args(argv)


def optional_polygons(path: Path | None, class_field: str | None) -> PolygonLabels | None:
    """Polygons of an optional vector file; with ``class_field`` only when the file has that field."""
    if path is None:
        return None
    if class_field:
        from osgeo import ogr

        dataset = ogr.Open(str(path))
        layer = dataset.GetLayer(0) if dataset is not None else None
        definition = layer.GetLayerDefn() if layer is not None else None
        names = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())] if definition else []
        if class_field in names:
            return read_polygon_file(path, class_field)
    return read_polygon_file(path, None)


def request_from_args(args: argparse.Namespace) -> ChipRequest:
    """The chip request of the shared command-line options (``training.chips`` and ``training.finetune``)."""
    return ChipRequest(
        raster=args.raster,
        labels=read_label_source(args.labels, args.class_field),
        tile_size_px=args.tile_size,
        overlap_px=args.overlap,
        validation=optional_polygons(args.validation, args.class_field),
        labeled_area=optional_polygons(args.labeled_area, None),
        background_class=args.background_class,
        validation_share=getattr(args, "validation_share", DEFAULT_VALIDATION_SHARE),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: writes the chips and prints the summary as JSON; exit code 2 for bad input."""
    from training.command import run_json_command

    args = _parse_args(argv)

    def action() -> dict[str, Any]:
        chips = write_chips(request_from_args(args), args.output)
        return {"folder": str(chips.folder), "classes": list(chips.scheme.names), "train_chips": chips.train_chips,
                "val_chips": chips.val_chips, "validation": chips.validation, "notes": list(chips.notes)}  # fmt: skip

    return run_json_command(action)


if __name__ == "__main__":
    raise SystemExit(main())
