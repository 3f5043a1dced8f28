"""Convert a benchmark's official raw layout into the one canonical layout the datasets read.

``python -m training.prepare DATASET --raw RAW_DIR --out OUT_DIR``

Output (see :mod:`training.datasets.base`)::

    OUT/<split>/images/<id>.tif|png     image patches (GeoTIFFs keep their georeference)
    OUT/<split>/masks/<id>.png          uint8 class indices, 255 = ignore (boundary, no-data, padding)
    OUT/meta.json                       classes, palette, eval classes, tiles per split, patching, sources + sha256

Accepted raw layouts (``training-spec.md`` section 6): Vaihingen ``top/top_mosaic_09cm_areaN.tif`` plus label
folders with ``top_mosaic_09cm_areaN.tif`` (complete) and ``..._noBoundary.tif`` (eroded); Potsdam
``2_Ortho_RGB/top_potsdam_X_Y_RGB.tif`` plus ``*_label.tif`` / ``*_label_noBoundary.tif``; the LoveDA Zenodo tree
``{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}``; UAVid ``uavid_{train,val,test}/seqN/{Images,Labels}``.

Patching follows the recipes: training tiles are cut into ``train_patch_px`` windows every ``train_stride_px``
with the last window moved back inside the tile (no padding unless the tile is smaller than a patch); val/test
tiles are cut into non-overlapping ``eval_patch_px`` windows padded with ignore, so the summed confusion matrix of
the patches equals the whole-tile one (GeoSeg padded with class 0 instead, which biased its scores). Patch ids are
``<tile>_<x0>_<y0>_<x1>_<y1>`` so patches can be stitched back. ISPRS training uses the complete labels and
val/test the eroded ones, as in the papers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from PIL import Image
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from engine.errors import InvalidInputError
from engine.inference.tiling import window_offsets
from training.datasets.base import (
    IGNORE_INDEX,
    DatasetInfo,
    DatasetNotFoundError,
    colours_to_indices,
    read_image,
    read_rgb,
)
from training.datasets.isprs import ISPRS_BOUNDARY_COLOUR
from training.datasets.loveda import LOVEDA, LOVEDA_RAW_MAX
from training.datasets.potsdam import POTSDAM, POTSDAM_DROPPED, POTSDAM_TILES
from training.datasets.uavid import UAVID, UAVID_IGNORE_COLOURS
from training.datasets.vaihingen import VAIHINGEN, VAIHINGEN_TILES

logger = logging.getLogger(__name__)

PREPARER_VERSION = 1
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PatchRecipe:
    """How tiles are cut; ``0`` patch size keeps whole tiles."""

    train_patch_px: int
    train_stride_px: int
    eval_patch_px: int

    def __post_init__(self) -> None:
        """Reject patch sizes that cannot tile."""
        if min(self.train_patch_px, self.train_stride_px, self.eval_patch_px) < 0:
            raise InvalidInputError(f"Patch sizes and strides must be >= 0, got {self}.")
        if self.train_patch_px > 0 and self.train_stride_px == 0:
            raise InvalidInputError("train_stride_px must be positive when train_patch_px is; e.g. half the patch.")


#: GeoSeg patching: Vaihingen 1024 every 512, Potsdam and UAVid 1024 every 1024; LoveDA images stay whole.
RECIPES: dict[str, PatchRecipe] = {
    "vaihingen": PatchRecipe(1024, 512, 1024),
    "potsdam": PatchRecipe(1024, 1024, 1024),
    "uavid": PatchRecipe(1024, 1024, 1024),
    "loveda": PatchRecipe(0, 0, 0),
}


@dataclass(frozen=True)
class RawTile:
    """One source image with its label file (None when labels are hidden)."""

    tile_id: str
    split: str
    image: Path
    label: Path | None


@dataclass
class PrepareReport:
    """What was written; becomes ``meta.json``."""

    tiles: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in _SPLITS})
    patches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SPLITS, 0))
    sources: list[dict[str, str]] = field(default_factory=list)
    unknown_label_px: int = 0


def axis_starts(size: int, patch: int, stride: int, shift_inside: bool) -> list[int]:
    """Window offsets along one axis covering ``size`` pixels.

    ``ceil((size - patch) / stride) + 1`` windows (at least one) so the last partial window is kept; with
    ``shift_inside`` the last window is moved back to end at the edge (when the axis is at least one patch long).
    """
    starts = window_offsets(size, patch, stride)
    if shift_inside and size >= patch:
        starts = sorted({min(s, size - patch) for s in starts})
    return starts


def iter_patch_windows(height: int, width: int, patch: int, stride: int, shift_inside: bool) -> Iterator[Window]:
    """Windows of ``patch`` x ``patch`` pixels (whole tile when ``patch`` is 0); may extend past the edge."""
    if patch <= 0:
        yield Window(0, 0, width, height)
        return
    for top in axis_starts(height, patch, stride, shift_inside):
        for left in axis_starts(width, patch, stride, shift_inside):
            yield Window(left, top, patch, patch)


def _cut(array: NDArray[Any], window: Window, fill: int) -> NDArray[Any]:
    """Slice the last two axes by ``window``, padding bottom/right with ``fill`` past the edge."""
    top, left, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    part = array[..., top : top + h, left : left + w]
    pad = [(0, 0)] * (array.ndim - 2) + [(0, h - part.shape[-2]), (0, w - part.shape[-1])]
    return np.pad(part, pad, constant_values=fill) if any(p[1] for p in pad) else part


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_png(array: NDArray[Any], path: Path) -> None:
    data = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    Image.fromarray(np.ascontiguousarray(data.astype(np.uint8))).save(path)


def _read_source(path: Path, as_geotiff: bool) -> tuple[NDArray[Any], dict[str, Any], Any]:
    """Image (C, H, W), a GeoTIFF profile for its patches and its transform (PNG sources: no profile)."""
    if not as_geotiff:
        return read_image(path), {}, None
    with rasterio.open(path) as src:
        image, transform = src.read(), src.transform
        profile = {"driver": "GTiff", "count": src.count, "dtype": src.dtypes[0], "crs": src.crs}
    profile["compress"] = "deflate"
    return image, profile, transform


def _write_patches(
    tile: RawTile,
    mask: NDArray[np.uint8] | None,
    out: Path,
    recipe: PatchRecipe,
    as_geotiff: bool,
    report: PrepareReport,
) -> None:
    """Cut one tile's image (and mask) into patches under ``out/<split>``."""
    image_dir, mask_dir = out / tile.split / "images", out / tile.split / "masks"
    image_dir.mkdir(parents=True, exist_ok=True)
    image, profile, transform = _read_source(tile.image, as_geotiff)
    training = tile.split == "train"
    patch = recipe.train_patch_px if training else recipe.eval_patch_px
    stride = recipe.train_stride_px if training else recipe.eval_patch_px
    height, width = image.shape[1:]
    if mask is not None and mask.shape != (height, width):
        raise InvalidInputError(
            f"Label of tile {tile.tile_id} is {mask.shape} but its image is {(height, width)}; check the raw files."
        )
    for window in iter_patch_windows(height, width, patch, stride, shift_inside=training):
        x0, y0 = int(window.col_off), int(window.row_off)
        name = f"{tile.tile_id}_{x0}_{y0}_{x0 + int(window.width)}_{y0 + int(window.height)}"
        part = _cut(image, window, 0)
        if as_geotiff:
            profile.update(height=part.shape[1], width=part.shape[2], transform=window_transform(window, transform))
            with rasterio.open(image_dir / f"{name}.tif", "w", **profile) as dst:
                dst.write(part)
        else:
            _write_png(part, image_dir / f"{name}.png")
        if mask is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
            _write_png(_cut(mask, window, IGNORE_INDEX)[None], mask_dir / f"{name}.png")
        report.patches[tile.split] += 1


def _colour_mask(label: Path, info: DatasetInfo, ignore_colours: Sequence[tuple[int, int, int]]) -> tuple[Any, int]:
    mask, unknown = colours_to_indices(read_rgb(label), info.palette, ignore_colours, info.ignore_index)
    if unknown:
        logger.warning("%s: %d pixels have colours of no class; they become ignore (255).", label.name, unknown)
    return mask, unknown


def _find(raw: Path, pattern: str, where: Callable[[Path], bool] = lambda path: True) -> dict[str, Path]:
    """Files under ``raw`` whose name matches ``pattern`` (one group = tile id) and ``where``, keyed by tile id."""
    regex = re.compile(pattern)
    found: dict[str, Path] = {}
    for path in sorted(raw.rglob("*")):
        match = regex.fullmatch(path.name)
        if match and path.is_file() and where(path):
            found[match.group(1)] = path
    return found


def _isprs_tiles(
    tiles_by_split: dict[str, tuple[str, ...]],
    images: dict[str, Path],
    complete: dict[str, Path],
    eroded: dict[str, Path],
) -> list[RawTile]:
    """Pair images with labels: complete labels for training, eroded ones for val/test (fallback: the other)."""
    tiles: list[RawTile] = []
    for split, ids in tiles_by_split.items():
        for tile_id in ids:
            first, second = (complete, eroded) if split == "train" else (eroded, complete)
            label = first.get(tile_id, second.get(tile_id))
            if tile_id not in images or label is None:
                logger.warning("%s tile %s is missing (image or label); skipped.", split, tile_id)
                continue
            tiles.append(RawTile(tile_id, split, images[tile_id], label))
    return tiles


def _prepare_colour_tiles(
    tiles: list[RawTile], info: DatasetInfo, out: Path, recipe: PatchRecipe, as_geotiff: bool, ignore: Sequence[Any]
) -> PrepareReport:
    report = PrepareReport()
    for tile in tiles:
        mask = None
        if tile.label is not None:
            mask, unknown = _colour_mask(tile.label, info, ignore)
            report.unknown_label_px += unknown
        _write_patches(tile, mask, out, recipe, as_geotiff, report)
        report.tiles[tile.split].append(tile.tile_id)
        for source in (tile.image, tile.label):
            if source is not None:
                report.sources.append({"file": source.name, "sha256": _sha256(source)})
    return report


def prepare_vaihingen(raw: Path, out: Path, recipe: PatchRecipe) -> PrepareReport:
    """ISPRS Vaihingen: IRRG ``top/`` tiles and colour labels -> patches (GeoTIFF images)."""
    # images and complete labels share file names; only the folder ("top") tells them apart
    images = _find(raw, r"top_mosaic_09cm_(area\d+)\.tif", lambda path: path.parent.name == "top")
    complete = _find(raw, r"top_mosaic_09cm_(area\d+)\.tif", lambda path: path.parent.name != "top")
    eroded = _find(raw, r"top_mosaic_09cm_(area\d+)_noBoundary\.tif")
    tiles = _isprs_tiles(dict(VAIHINGEN_TILES), images, complete, eroded)
    return _prepare_colour_tiles(tiles, VAIHINGEN, out, recipe, True, (ISPRS_BOUNDARY_COLOUR,))


def prepare_potsdam(raw: Path, out: Path, recipe: PatchRecipe) -> PrepareReport:
    """ISPRS Potsdam: ``2_Ortho_RGB`` tiles and colour labels -> patches (GeoTIFF images); 7_10 is skipped."""
    images = _find(raw, r"top_potsdam_(\d+_\d+)_RGB\.tif")
    complete = _find(raw, r"top_potsdam_(\d+_\d+)_label\.tif")
    eroded = _find(raw, r"top_potsdam_(\d+_\d+)_label_noBoundary\.tif")
    for dropped in POTSDAM_DROPPED:
        if dropped in images:
            logger.info("Potsdam tile %s skipped: its labels are faulty.", dropped)
    tiles = _isprs_tiles(dict(POTSDAM_TILES), images, complete, eroded)
    return _prepare_colour_tiles(tiles, POTSDAM, out, recipe, True, (ISPRS_BOUNDARY_COLOUR,))


def _split_of(path: Path, raw: Path, names: dict[str, str]) -> str | None:
    """The split named by the first folder under ``raw`` whose lower-cased name is a key of ``names``."""
    for part in path.relative_to(raw).parts:
        if part.lower() in names:
            return names[part.lower()]
    return None


def prepare_uavid(raw: Path, out: Path, recipe: PatchRecipe) -> PrepareReport:
    """UAVid: ``uavid_<split>/seqN/Images/*.png`` + ``Labels/*.png`` colour labels -> PNG patches."""
    names = {"uavid_train": "train", "uavid_val": "val", "uavid_test": "test"}
    tiles: list[RawTile] = []
    for image in sorted(raw.rglob("Images/*.png")):
        split = _split_of(image, raw, names)
        if split is None:
            continue
        label = image.parent.parent / "Labels" / image.name
        tile_id = f"{image.parent.parent.name}_{image.stem}"
        tiles.append(RawTile(tile_id, split, image, label if label.is_file() else None))
    return _prepare_colour_tiles(tiles, UAVID, out, recipe, False, UAVID_IGNORE_COLOURS)


def prepare_loveda(raw: Path, out: Path, recipe: PatchRecipe) -> PrepareReport:
    """LoveDA: copy the PNG images; masks 0 (no-data) -> 255 and 1..7 -> 0..6. Whole 1024 images, no patching."""
    if recipe.train_patch_px or recipe.eval_patch_px:
        raise InvalidInputError("LoveDA is used as whole 1024 px images; do not pass patch sizes for it.")
    report = PrepareReport()
    seen: dict[str, Path] = {}
    for image in sorted(raw.rglob("images_png/*.png")):
        split = _split_of(image, raw, {"train": "train", "val": "val", "test": "test"})
        if split is None:
            continue
        if image.name in seen and seen[image.name] != image:
            raise InvalidInputError(f"LoveDA image name '{image.name}' appears twice ({seen[image.name]}, {image}).")
        seen[image.name] = image
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, out / split / "images" / image.name)
        label = image.parent.parent / "masks_png" / image.name
        if label.is_file():
            raw_mask = np.asarray(Image.open(label)).astype(np.int64)
            unknown = int((raw_mask > LOVEDA_RAW_MAX).sum())
            report.unknown_label_px += unknown
            # raw 0 is no-data and values above 7 are no class: both become ignore; 1..7 -> 0..6
            mask = np.where((raw_mask >= 1) & (raw_mask <= LOVEDA_RAW_MAX), raw_mask - 1, IGNORE_INDEX)
            (out / split / "masks").mkdir(parents=True, exist_ok=True)
            _write_png(mask[None], out / split / "masks" / image.name)
            report.sources.append({"file": label.name, "sha256": _sha256(label)})
        report.tiles[split].append(f"{image.parent.parent.name}/{image.stem}")
        report.patches[split] += 1
        report.sources.append({"file": image.name, "sha256": _sha256(image)})
    if report.unknown_label_px:
        logger.warning("LoveDA: %d mask pixels had values above 7; they became ignore.", report.unknown_label_px)
    return report


PREPARERS: dict[str, tuple[DatasetInfo, Callable[[Path, Path, PatchRecipe], PrepareReport]]] = {
    "vaihingen": (VAIHINGEN, prepare_vaihingen),
    "potsdam": (POTSDAM, prepare_potsdam),
    "loveda": (LOVEDA, prepare_loveda),
    "uavid": (UAVID, prepare_uavid),
}


def prepare(dataset: str, raw: Path, out: Path, recipe: PatchRecipe | None = None) -> dict[str, Any]:
    """Convert ``raw`` into the canonical layout under ``out`` and write ``out/meta.json``.

    Returns:
        The metadata written to ``meta.json``.

    Raises:
        InvalidInputError: Unknown dataset.
        DatasetNotFoundError: ``raw`` is missing or holds no recognisable file.
    """
    if dataset not in PREPARERS:
        raise InvalidInputError(f"Unknown dataset '{dataset}'; choose one of {', '.join(sorted(PREPARERS))}.")
    if not raw.is_dir():
        raise DatasetNotFoundError(f"Raw folder '{raw}' does not exist; unpack the official archives there.")
    info, preparer = PREPARERS[dataset]
    recipe = recipe if recipe is not None else RECIPES[dataset]
    report = preparer(raw, out, recipe)
    if not any(report.tiles.values()):
        raise DatasetNotFoundError(
            f"No {dataset} files recognised under '{raw}'; expected the official layout (see training.prepare docs)."
        )
    meta = {
        "dataset": dataset,
        "preparer_version": PREPARER_VERSION,
        "classes": list(info.class_names),
        "palette": [list(c) for c in info.palette],
        "eval_classes": list(info.eval_classes),
        "ignore_index": info.ignore_index,
        "band_names": list(info.band_names),
        "gsd_m": info.gsd_m,
        "protocol": info.protocol,
        "splits": {
            split: {
                "tiles": report.tiles[split],
                "patches": report.patches[split],
                "patch_px": recipe.train_patch_px if split == "train" else recipe.eval_patch_px,
                "stride_px": recipe.train_stride_px if split == "train" else recipe.eval_patch_px,
            }
            for split in _SPLITS
        },
        "unknown_label_px": report.unknown_label_px,
        "sources": report.sources,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    logger.info("Prepared %s: %s", dataset, {s: report.patches[s] for s in _SPLITS})
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(PREPARERS))
    parser.add_argument("--raw", type=Path, required=True, help="folder with the unpacked official archives")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the canonical layout")
    parser.add_argument("--train-patch-px", type=int, help="training patch size (0 = whole tiles)")
    parser.add_argument("--train-stride-px", type=int, help="training patch stride")
    parser.add_argument("--eval-patch-px", type=int, help="val/test patch size, non-overlapping (0 = whole tiles)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    default = RECIPES[args.dataset]
    train_patch = default.train_patch_px if args.train_patch_px is None else args.train_patch_px
    recipe = PatchRecipe(
        train_patch_px=train_patch,
        train_stride_px=args.train_stride_px or default.train_stride_px or train_patch,
        eval_patch_px=default.eval_patch_px if args.eval_patch_px is None else args.eval_patch_px,
    )
    try:
        prepare(args.dataset, args.raw, args.out, recipe)
    except (InvalidInputError, DatasetNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
