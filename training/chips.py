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
from numpy.typing import NDArray
from rasterio.io import DatasetReader
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from engine.errors import CanceledError, InvalidInputError, InvalidRasterError, OutputPathError
from engine.inference.tiling import window_offsets
from engine.model_card import NODATA_CLASS as IGNORE_INDEX
from engine.progress import NullProgress, ProgressReporter
from engine.raster.reader import raster_gsd_m
from training.chip_grid import GridLabels
from training.chip_splits import CutSplit, PolygonSplit, Split, choose_cut
from training.labels import (
    ClassScheme,
    LabelSource,
    PolygonLabels,
    RasterLabels,
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
    grid: GridLabels | None = None
    try:
        grid = GridLabels(request, dataset, notes)
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


def _make_split(request: ChipRequest, grid: GridLabels, labelled: Window, notes: list[str]) -> Split:
    if request.validation is not None:
        if not request.validation.features:
            raise InvalidInputError(
                f"VALIDATION '{request.validation.source}' holds no polygons; draw some or leave it empty."
            )
        return PolygonSplit(request.validation, grid, notes)
    if request.validation_share == 0:
        return Split()
    coarse, factor = grid.coarse_map(labelled)
    axis, cells, after, held = choose_cut(coarse, grid.scheme.num_classes, request.validation_share)
    origin = int(labelled.col_off) if axis == "col" else int(labelled.row_off)
    gap = max(1, request.tile_size_px // 8)
    return CutSplit(axis, origin + cells * factor, after, gap, held, labelled)


def _finish(
    request: ChipRequest,
    grid: GridLabels,
    split: Split,
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


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


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
