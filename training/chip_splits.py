"""Which labelled pixels of a chip validate rather than train, for :mod:`training.chips`.

VALIDATION polygons with their own classes (:class:`PolygonSplit`, validation labels), without (validation areas),
or a straight cut across the labelled area (:class:`CutSplit`, placed by :func:`choose_cut`); see the rules in
:mod:`training.chips`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from engine.errors import InvalidInputError
from engine.model_card import NODATA_CLASS as IGNORE_INDEX
from training.chip_grid import GridLabels, bounds_to_window, valid_pixels
from training.labels import (
    PolygonLabels,
    index_polygons,
    polygon_bounds,
    rasterize_classes,
    rasterize_mask,
)

__all__ = ["CutSplit", "PolygonSplit", "Split", "choose_cut"]


class Split:
    """Splits a window's labels into (training labels, validation labels)."""

    description = ""
    mode = "none"

    def split(self, window: Window, labels: NDArray[np.uint8], grid: GridLabels) -> tuple[NDArray[np.uint8], ...]:
        """(training labels, validation labels) of ``window``'s ``labels``; here all train."""
        return labels, np.full_like(labels, IGNORE_INDEX)

    def validation_window(self, labelled: Window) -> Window | None:
        """The part of the ``labelled`` window that holds validation labels, None for none."""
        return None


class PolygonSplit(Split):
    """VALIDATION polygons: with classes (validation labels) or without (validation areas)."""

    def __init__(self, polygons: PolygonLabels, grid: GridLabels, notes: list[str]) -> None:
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

    def split(self, window: Window, labels: NDArray[np.uint8], grid: GridLabels) -> tuple[NDArray[np.uint8], ...]:
        """Labels under the polygons validate (their own classes, or the labels inside areas); the rest train."""
        transform = window_transform(window, grid.dataset.transform)
        shape = labels.shape
        inside = rasterize_mask(self._indexed, transform, (int(shape[0]), int(shape[1])))
        train = np.where(inside, IGNORE_INDEX, labels).astype(np.uint8)
        if self.with_classes:
            val, _ = rasterize_classes(self._indexed, grid.scheme.num_classes, transform, (shape[0], shape[1]))
            val[~valid_pixels(grid.dataset, grid.bands, window)] = IGNORE_INDEX
        else:
            val = np.where(inside, labels, IGNORE_INDEX).astype(np.uint8)
        return train, val

    def validation_window(self, labelled: Window) -> Window | None:
        """The window around the VALIDATION polygons."""
        box = polygon_bounds(self.polygons)
        return None if box is None else bounds_to_window(box, self._grid.dataset)


class CutSplit(Split):
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

    def split(self, window: Window, labels: NDArray[np.uint8], grid: GridLabels) -> tuple[NDArray[np.uint8], ...]:
        """Labels beyond the cut validate, those more than the gap before it train."""
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
        """The part of ``labelled`` beyond the cut."""
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
