"""Generic "images + colour masks" dataset, split by whole tiles, held in memory; plus the Dubai aerial preset.

Layout read as it is (no preparation step)::

    ROOT/<tile>/images/<name>.jpg
    ROOT/<tile>/masks/<name>.png      RGB, one colour per class

Class colours and "no class" colours come from the config; every other colour becomes ignore and is counted in
a logged warning. Validation and test tiles are chosen by whole tile (``val_tiles: [2]`` selects ``tile2``), so
no part of a validation area is ever trained on.

Images are decoded once, optionally downscaled (``downscale: 0.5``), and kept in memory: a small dataset on a
2-core CPU should not pay JPEG decoding every step. With ``samples_per_epoch`` the dataset yields that many random
samples per epoch (an image drawn with probability proportional to its area, then a random window of
``window_px``, then the transforms); without it, it enumerates whole images or a non-overlapping grid of
``eval_patch_px`` windows padded with ignore (deterministic, for validation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from engine.errors import InvalidInputError
from training.datasets.base import (
    IMAGE_SUFFIXES,
    RGB,
    DatasetInfo,
    DatasetNotFoundError,
    SegmentationDataset,
    colours_to_indices,
    read_image,
    read_rgb,
)
from training.transforms import IGNORE_INDEX, Normalization, Sample, SampleTransform, pad_sample

logger = logging.getLogger(__name__)

#: Dubai aerial classes and mask colours as found in the PNGs (the release's classes.json is wrong).
DUBAI_CLASSES: Final = (
    ("building", (60, 16, 152)),
    ("land", (132, 41, 246)),
    ("road", (110, 193, 228)),
    ("vegetation", (254, 221, 58)),
    ("water", (226, 169, 41)),
)
#: "unlabeled" grey and the stray pure-black pixels carry no class.
DUBAI_IGNORE_COLOURS: Final = ((155, 155, 155), (0, 0, 0))
_SPLITS = ("train", "val", "test", "all")


def parse_colour(value: Any) -> RGB:
    """Accept ``"#rrggbb"`` or an ``[r, g, b]`` sequence."""
    if isinstance(value, str):
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise InvalidInputError(f"Colour {value!r} is not '#rrggbb' or [r, g, b].")
        return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or any(not 0 <= v <= 255 for v in rgb):
        raise InvalidInputError(f"Colour {value!r} must be three integers in 0..255.")
    return (rgb[0], rgb[1], rgb[2])


def _tile_matches(tile: str, wanted: int | str) -> bool:
    if isinstance(wanted, int):
        number = re.fullmatch(r"\D*(\d+)", tile)
        return number is not None and int(number.group(1)) == wanted
    return tile == wanted


def _resize(array: NDArray[Any], factor: float, resample: Image.Resampling) -> NDArray[Any]:
    """Resize an (H, W) or (H, W, C) uint8 array by ``factor`` with Pillow."""
    height, width = array.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(array).resize(size, resample))


class ColourMaskDataset(SegmentationDataset):
    """Images with RGB colour masks in per-tile folders, split by whole tiles, cached in memory."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: Sequence[tuple[str, Any] | Mapping[str, Any]] = DUBAI_CLASSES,
        ignore_colours: Sequence[Any] = DUBAI_IGNORE_COLOURS,
        val_tiles: Sequence[int | str] = (),
        test_tiles: Sequence[int | str] = (),
        downscale: float = 1.0,
        samples_per_epoch: int | None = None,
        window_px: int | None = None,
        eval_patch_px: int | None = None,
        balance_tiles: bool = False,
        transforms: SampleTransform | None = None,
        normalization: Normalization | None = None,
        mosaic_p: float = 0.0,
        name: str = "colour_masks",
        gsd_m: float | None = None,
    ) -> None:
        """Find the split's tiles and load their images and masks into memory.

        Args:
            root: Folder of tile folders.
            split: ``train`` (tiles not in val/test), ``val``, ``test`` or ``all``.
            classes: ``(name, colour)`` pairs or ``{"name": ..., "color": ...}`` maps, in class-index order.
            ignore_colours: Colours that carry no class.
            val_tiles: Validation tiles: numbers (``2`` -> ``tile2``) or folder names. Never trained on.
            test_tiles: Test tiles, same form; never trained on.
            downscale: Resize factor applied once at load (bilinear image, nearest mask).
            samples_per_epoch: If set, yield this many random samples per epoch (training).
            window_px: Random window cut from the drawn image before the transforms (saves resizing whole images).
            eval_patch_px: Without ``samples_per_epoch``: cut images into a grid of windows of this size.
            balance_tiles: Random samples draw every tile equally often (then images by area within the tile)
                instead of every pixel equally often. The Dubai tiles range from 2 to 33 megapixels and differ in
                scene and labelling style; by area, one tile would give over half of all training samples.
            transforms: Joint augmentation.
            normalization: Band scaling and standardisation.
            mosaic_p: Mosaic probability.
            name: Dataset name for reports and model cards.
            gsd_m: Ground sampling distance after ``downscale``, if known.
        """
        super().__init__(transforms, normalization, mosaic_p)
        if split not in _SPLITS:
            raise InvalidInputError(f"Unknown split '{split}'; choose one of {', '.join(_SPLITS)}.")
        if not 0 < downscale <= 1:
            raise InvalidInputError(f"downscale must be in (0, 1], got {downscale}.")
        names, palette = self._parse_classes(classes)
        self.info = DatasetInfo(
            name=name,
            class_names=names,
            palette=palette,
            eval_classes=tuple(range(len(names))),
            splits={s: (s,) for s in _SPLITS},
            gsd_m=gsd_m,
        )
        self.root = Path(root)
        self.split = split
        self.ignore_colours = tuple(parse_colour(c) for c in ignore_colours)
        self.downscale = downscale
        self.samples_per_epoch = samples_per_epoch
        self.window_px = window_px
        self.tiles = self._select_tiles(split, val_tiles, test_tiles)
        self.eval_patch_px = eval_patch_px
        self.images, self.masks = self._load_all()
        self.windows = self._eval_windows(eval_patch_px) if samples_per_epoch is None else []
        self._draw_weights = self._sampling_weights(balance_tiles)

    def _sampling_weights(self, balance_tiles: bool) -> NDArray[np.float64]:
        """Probability of drawing each image: by area, or by area within tiles that are drawn equally often."""
        areas = np.array([m.size for m in self.masks], dtype=np.float64)
        if balance_tiles:
            # Each image's share of its own tile's area; every tile then sums to the same weight.
            _, tile_index = np.unique(self._image_tiles, return_inverse=True)
            areas = areas / np.bincount(tile_index, weights=areas)[tile_index]
        weights: NDArray[np.float64] = areas / areas.sum()
        return weights

    @staticmethod
    def _parse_classes(
        classes: Sequence[tuple[str, Any] | Mapping[str, Any]],
    ) -> tuple[tuple[str, ...], tuple[RGB, ...]]:
        names: list[str] = []
        palette: list[RGB] = []
        for entry in classes:
            if isinstance(entry, Mapping):
                name, colour = str(entry["name"]), entry.get("color", entry.get("colour"))
            else:
                name, colour = str(entry[0]), entry[1]
            names.append(name)
            palette.append(parse_colour(colour))
        if not names:
            raise InvalidInputError("classes is empty; list each class as {name: ..., color: '#rrggbb'}.")
        return tuple(names), tuple(palette)

    def _select_tiles(self, split: str, val: Sequence[int | str], test: Sequence[int | str]) -> list[Path]:
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"Dataset folder '{self.root}' does not exist; set the dataset root.")
        all_tiles = sorted((p for p in self.root.iterdir() if (p / "images").is_dir()), key=lambda p: p.name)
        if not all_tiles:
            raise DatasetNotFoundError(f"No '<tile>/images' folders under '{self.root}'; is this the right root?")
        for wanted in (*val, *test):
            if not any(_tile_matches(t.name, wanted) for t in all_tiles):
                raise InvalidInputError(
                    f"Tile {wanted!r} is not under '{self.root}'; tiles are {', '.join(t.name for t in all_tiles)}."
                )

        def held_out(tile: Path, wanted: Sequence[int | str]) -> bool:
            return any(_tile_matches(tile.name, w) for w in wanted)

        chosen = {
            "all": all_tiles,
            "val": [t for t in all_tiles if held_out(t, val)],
            "test": [t for t in all_tiles if held_out(t, test)],
            "train": [t for t in all_tiles if not held_out(t, val) and not held_out(t, test)],
        }[split]
        if not chosen:
            raise InvalidInputError(f"Split '{split}' has no tiles; set val_tiles/test_tiles (e.g. val_tiles: [2]).")
        return chosen

    def _load_all(self) -> tuple[list[NDArray[np.uint8]], list[NDArray[np.uint8]]]:
        images: list[NDArray[np.uint8]] = []
        masks: list[NDArray[np.uint8]] = []
        self._image_tiles: list[str] = []
        unknown_px = 0
        for tile in self.tiles:
            for image_path in sorted(p for p in (tile / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                mask_path = tile / "masks" / f"{image_path.stem}.png"
                if not mask_path.is_file():
                    raise DatasetNotFoundError(f"Mask '{mask_path}' for image '{image_path}' is missing.")
                image, mask, unknown = self._load_pair(image_path, mask_path)
                images.append(image)
                masks.append(mask)
                self._image_tiles.append(tile.name)
                unknown_px += unknown
        if unknown_px:
            logger.warning("%s: %d mask pixels had colours of no class; they are ignored.", self.info.name, unknown_px)
        logger.info(
            "%s %s: %d images from tiles %s", self.info.name, self.split, len(images), [t.name for t in self.tiles]
        )
        return images, masks

    def _load_pair(self, image_path: Path, mask_path: Path) -> tuple[NDArray[np.uint8], NDArray[np.uint8], int]:
        """Decode one pair; masks stay uint8 in memory (an int64 copy is made per sample, not per dataset)."""
        image = read_image(image_path).astype(np.uint8, copy=False)
        mask, unknown = colours_to_indices(read_rgb(mask_path), self.info.palette, self.ignore_colours)
        if mask.shape != image.shape[1:]:
            raise InvalidInputError(f"Mask '{mask_path}' is {mask.shape} but its image is {image.shape[1:]}.")
        if self.downscale != 1.0:
            image = np.moveaxis(_resize(np.moveaxis(image, 0, -1), self.downscale, Image.Resampling.BILINEAR), -1, 0)
            mask = _resize(mask, self.downscale, Image.Resampling.NEAREST)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask), unknown

    def _eval_windows(self, patch_px: int | None) -> list[tuple[int, int, int]]:
        """(image index, top, left) of every grid window; ``top = left = -1`` means the whole image."""
        if patch_px is None:
            return [(i, -1, -1) for i in range(len(self.masks))]
        windows: list[tuple[int, int, int]] = []
        for i, mask in enumerate(self.masks):
            height, width = mask.shape
            windows += [(i, top, left) for top in range(0, height, patch_px) for left in range(0, width, patch_px)]
        return windows

    def _window(self, index: int, top: int, left: int, size: int) -> Sample:
        """Window of image ``index`` padded to ``size`` (image 0, mask ignore)."""
        image = self.images[index][:, top : top + size, left : left + size]
        mask = self.masks[index][top : top + size, left : left + size].astype(np.int64)
        return pad_sample({"image": image, "mask": mask}, size, size, IGNORE_INDEX)

    def __len__(self) -> int:
        """``samples_per_epoch`` in random mode, else the number of images or grid windows."""
        return self.samples_per_epoch if self.samples_per_epoch is not None else len(self.windows)

    def load_sample(self, index: int, rng: np.random.Generator) -> Sample:
        """A random (training) or enumerated (evaluation) image or window."""
        if self.samples_per_epoch is not None:
            image_index = int(rng.choice(len(self.masks), p=self._draw_weights))
            if self.window_px is None:
                return {"image": self.images[image_index], "mask": self.masks[image_index].astype(np.int64)}
            height, width = self.masks[image_index].shape
            top = int(rng.integers(0, max(height - self.window_px, 0) + 1))
            left = int(rng.integers(0, max(width - self.window_px, 0) + 1))
            return self._window(image_index, top, left, self.window_px)
        image_index, top, left = self.windows[index]
        if top < 0 or self.eval_patch_px is None:
            return {"image": self.images[image_index], "mask": self.masks[image_index].astype(np.int64)}
        return self._window(image_index, top, left, self.eval_patch_px)


class DubaiAerial(ColourMaskDataset):
    """The Dubai aerial land-cover set (CC0): building, land, road, vegetation, water; unlabeled/black ignored."""

    def __init__(self, root: str | Path, split: str = "train", **options: Any) -> None:
        """Same options as :class:`ColourMaskDataset`, with the Dubai classes and ignore colours as defaults."""
        options.setdefault("name", "dubai_aerial")
        super().__init__(root, split, **options)
