"""Dataset contract, dataset descriptions, image/label readers and the reader of the canonical prepared layout.

Every dataset returns ``{"image": float32 tensor (C, H, W) normalised, "mask": int64 tensor (H, W)}`` with
:data:`IGNORE_INDEX` (255) wherever a pixel has no class: no-data, eroded boundaries, unknown colours and padding.

The canonical layout written by ``python -m training.prepare``::

    ROOT/meta.json
    ROOT/<split>/images/<id>.tif|png|jpg
    ROOT/<split>/masks/<id>.png          uint8 class indices, 255 = ignore

A split without a ``masks`` folder (LoveDA / UAVid test: labels are hidden) yields all-ignore masks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
import torch
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import Dataset

from engine.errors import BiCoRSegError, InvalidInputError
from training.transforms import IGNORE_INDEX, Normalization, Sample, SampleTransform, mosaic, to_tensors

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "CanonicalDataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "SegmentationDataset",
    "colours_to_indices",
    "read_image",
    "read_rgb",
]

RGB = tuple[int, int, int]
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_GEOTIFF_SUFFIXES = (".tif", ".tiff")


class DatasetNotFoundError(BiCoRSegError, FileNotFoundError):
    """A dataset folder, split or file is missing."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset's labels mean and how it is scored.

    Attributes:
        name: Registry name (``"loveda"``).
        class_names: Class names in index order 0..K-1.
        palette: RGB colour per class, same order.
        eval_classes: Classes the paper protocol averages mIoU/mF1 over (ISPRS leaves out clutter).
        band_names: Input bands in file order (Vaihingen is NIR-R-G).
        splits: Public split name -> canonical folders it reads (``"train_val"`` -> ``("train", "val")``).
        ignore_index: Mask value of unlabelled pixels.
        gsd_m: Ground sampling distance in metres per pixel, None if unknown.
        protocol: One line naming the paper protocol, for reports.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[RGB, ...]
    eval_classes: tuple[int, ...]
    band_names: tuple[str, ...] = ("red", "green", "blue")
    splits: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"train": ("train",), "val": ("val",), "test": ("test",)}
    )
    ignore_index: int = IGNORE_INDEX
    gsd_m: float | None = None
    protocol: str = "mean over all classes"

    def __post_init__(self) -> None:
        """Check that names, colours and evaluation classes agree."""
        k = len(self.class_names)
        if len(self.palette) != k:
            raise InvalidInputError(f"Dataset '{self.name}' has {len(self.palette)} colours for {k} classes.")
        if not self.eval_classes or any(c < 0 or c >= k for c in self.eval_classes):
            raise InvalidInputError(f"Dataset '{self.name}' eval_classes {self.eval_classes} must index 0..{k - 1}.")
        if 0 <= self.ignore_index < k:
            raise InvalidInputError(f"Dataset '{self.name}' ignore_index {self.ignore_index} collides with a class.")

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.class_names)

    @property
    def hex_colors(self) -> tuple[str, ...]:
        """Palette as ``#rrggbb`` strings (the model card's ``class_colors``)."""
        return tuple(f"#{r:02x}{g:02x}{b:02x}" for r, g, b in self.palette)


def read_image(path: Path, bands: Sequence[int] | None = None) -> NDArray[Any]:
    """Read an image as a (C, H, W) array in its stored dtype.

    GeoTIFFs go through rasterio; PNG/JPEG through Pillow (palette and grey images become RGB / 1 band).

    Args:
        path: Image file.
        bands: 1-based band indexes to keep (default all).
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"Image '{path}' does not exist; re-run training.prepare or check the root.")
    if path.suffix.lower() in _GEOTIFF_SUFFIXES:
        with rasterio.open(path) as src:
            data: NDArray[Any] = src.read(list(bands) if bands is not None else None)
        return data
    with Image.open(path) as img:
        pil = img.convert("RGB") if img.mode in ("P", "RGBA", "CMYK", "YCbCr") else img
        array = np.asarray(pil)
    image = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if bands is not None:
        image = image[[b - 1 for b in bands]]
    return np.ascontiguousarray(image)


def read_rgb(path: Path) -> NDArray[np.uint8]:
    """Read a colour-coded label image as a (3, H, W) uint8 array (first three bands)."""
    data = read_image(path)
    if data.shape[0] < 3:
        raise InvalidInputError(f"Label image '{path}' has {data.shape[0]} band(s); a colour label needs RGB.")
    return np.ascontiguousarray(data[:3].astype(np.uint8, copy=False))


def read_index_mask(path: Path) -> NDArray[np.int64]:
    """Read a single-band index mask (canonical ``masks/*.png``) as (H, W) int64."""
    data = read_image(path)
    if data.shape[0] != 1:
        raise InvalidInputError(f"Mask '{path}' has {data.shape[0]} bands; expected one band of class indices.")
    mask: NDArray[np.int64] = data[0].astype(np.int64)
    return mask


def colours_to_indices(
    rgb: NDArray[np.uint8],
    palette: Sequence[RGB],
    ignore_colours: Sequence[RGB] = (),
    ignore_index: int = IGNORE_INDEX,
) -> tuple[NDArray[np.uint8], int]:
    """Map an RGB label image to class indices by exact colour match.

    Args:
        rgb: (3, H, W) colours.
        palette: Colour of class i at position i.
        ignore_colours: Colours that mean "no class" (boundary, unlabeled).
        ignore_index: Value written for ignore colours and for colours in neither list.

    Returns:
        (H, W) uint8 indices and the number of pixels whose colour was unknown (also set to ignore).
    """
    code = (rgb[0].astype(np.uint32) << 16) | (rgb[1].astype(np.uint32) << 8) | rgb[2].astype(np.uint32)
    out = np.full(code.shape, ignore_index, dtype=np.uint8)
    known = np.zeros(code.shape, dtype=bool)
    for index, (r, g, b) in enumerate(palette):
        hit = code == np.uint32((r << 16) | (g << 8) | b)
        out[hit] = index
        known |= hit
    for r, g, b in ignore_colours:
        known |= code == np.uint32((r << 16) | (g << 8) | b)
    return out, int((~known).sum())


def _draw_rng() -> np.random.Generator:
    """Generator seeded from torch's RNG, which the DataLoader seeds differently in every worker."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


class SegmentationDataset(Dataset[dict[str, torch.Tensor]]):
    """Base of every dataset: load a raw sample, optionally mosaic, augment, normalise, convert to tensors.

    Subclasses implement ``__len__`` and :meth:`load_sample` and set ``info``.
    """

    info: DatasetInfo

    def __init__(
        self,
        transforms: SampleTransform | None = None,
        normalization: Normalization | None = None,
        mosaic_p: float = 0.0,
    ) -> None:
        """Set up the per-sample processing.

        Args:
            transforms: Joint augmentation applied to the numpy sample (after mosaic).
            normalization: Band scaling and standardisation; default ImageNet on 8-bit data.
            mosaic_p: Probability of replacing a sample by a 4-image mosaic (training only).
        """
        self.transforms = transforms
        self.normalization = normalization if normalization is not None else Normalization()
        self.mosaic_p = mosaic_p

    def __len__(self) -> int:
        """Number of samples."""
        raise NotImplementedError

    def load_sample(self, index: int, rng: np.random.Generator) -> Sample:
        """Raw sample ``index``: (C, H, W) image in file dtype and (H, W) int64 mask."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Sample ``index`` as normalised tensors."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = _draw_rng()
        sample = self.load_sample(index, rng)
        if self.mosaic_p > 0 and rng.random() < self.mosaic_p:
            others = [self.load_sample(int(i), rng) for i in rng.integers(0, len(self), size=3)]
            sample = mosaic([sample, *others], rng, self.info.ignore_index)
        if self.transforms is not None:
            sample = self.transforms(sample, rng)
        return to_tensors(sample, self.normalization)


class CanonicalDataset(SegmentationDataset):
    """Reads the canonical layout written by ``training.prepare`` (see the module docstring).

    Subclasses only declare ``INFO`` (classes, palette, splits, bands).
    """

    INFO: ClassVar[DatasetInfo]

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: SampleTransform | None = None,
        normalization: Normalization | None = None,
        mosaic_p: float = 0.0,
    ) -> None:
        """Index the image/mask pairs of one split.

        Args:
            root: Folder holding ``<split>/images`` and ``<split>/masks`` (the ``--out`` of training.prepare).
            split: A key of ``INFO.splits`` (e.g. ``train``, ``val``, ``test``, ``train_val``).
            transforms: Joint augmentation.
            normalization: Band scaling and standardisation.
            mosaic_p: Mosaic probability.

        Raises:
            InvalidInputError: Unknown split.
            DatasetNotFoundError: A split folder or a mask is missing.
        """
        super().__init__(transforms, normalization, mosaic_p)
        self.info = self.INFO
        if split not in self.info.splits:
            raise InvalidInputError(
                f"Unknown split '{split}' for {self.info.name}; choose one of {', '.join(self.info.splits)}."
            )
        self.root = Path(root)
        self.split = split
        self.items = [item for folder in self.info.splits[split] for item in self._index_folder(folder)]
        if not self.items:
            raise DatasetNotFoundError(
                f"No images in split '{split}' under '{self.root}'; run "
                f"`python -m training.prepare {self.info.name} --raw RAW --out {self.root}` first."
            )

    def _index_folder(self, folder: str) -> list[tuple[Path, Path | None]]:
        image_dir = self.root / folder / "images"
        mask_dir = self.root / folder / "masks"
        if not image_dir.is_dir():
            raise DatasetNotFoundError(
                f"Folder '{image_dir}' does not exist; prepare the dataset with "
                f"`python -m training.prepare {self.info.name} --raw RAW --out {self.root}`."
            )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not mask_dir.is_dir():
            logger.warning("%s has no masks folder: its samples get all-ignore masks (labels hidden).", folder)
            return [(image, None) for image in images]
        items: list[tuple[Path, Path | None]] = []
        for image in images:
            mask = mask_dir / f"{image.stem}.png"
            if not mask.is_file():
                raise DatasetNotFoundError(
                    f"Mask '{mask}' for image '{image.name}' is missing; re-run training.prepare."
                )
            items.append((image, mask))
        return items

    def __len__(self) -> int:
        """Number of image/mask pairs in the split."""
        return len(self.items)

    def load_sample(self, index: int, rng: np.random.Generator) -> Sample:
        """Read image ``index`` and its mask (all-ignore when the split has no labels)."""
        image_path, mask_path = self.items[index]
        image = read_image(image_path)
        if mask_path is None:
            mask = np.full(image.shape[1:], self.info.ignore_index, dtype=np.int64)
        else:
            mask = read_index_mask(mask_path)
            if mask.shape != image.shape[1:]:
                raise InvalidInputError(
                    f"Mask '{mask_path.name}' is {mask.shape} but its image is {image.shape[1:]}; re-run training.prepare."
                )
        return {"image": image, "mask": mask}
