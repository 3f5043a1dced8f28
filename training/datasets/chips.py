"""Training chips written by :mod:`training.chips` (``bicorseg:exporttrainingdata``) as a dataset.

``ROOT/manifest.json`` lists the chips, their split (``train`` / ``val``), the classes, bands and resolution; each
chip is ``images/<id>.tif`` (raster values) + ``labels/<id>.tif`` (class indices, 255 = no class). With
``samples_per_epoch`` the split yields that many random chips per epoch, each drawn with probability proportional to
its labelled pixels (sparse chips are not over-sampled), then augmented; without it, every chip once, as it is
(validation: whole chips, predicted tile by tile like any image). Chips are read once and kept in memory up to
``cache_mb``; beyond, they are read from disk each time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray

from engine.errors import InvalidInputError
from training.datasets.base import DatasetInfo, DatasetNotFoundError, SegmentationDataset
from training.transforms import Normalization, Sample, SampleTransform

__all__ = ["ChipDataset", "read_manifest"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The chip folder's manifest.

    Raises:
        DatasetNotFoundError: If the folder or its manifest is missing.
        InvalidInputError: If the manifest is not a chip manifest.
    """
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DatasetNotFoundError(f"'{root}' has no manifest.json; write the chips with python -m training.chips.")
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("kind") != "bicorseg-training-chips":
        raise InvalidInputError(f"'{path}' is not a manifest of training chips (kind {manifest.get('kind')!r}).")
    return manifest


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


class ChipDataset(SegmentationDataset):
    """The chips of one split of a chip folder."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        samples_per_epoch: int | None = None,
        cache_mb: float = 1024.0,
        transforms: SampleTransform | None = None,
        normalization: Normalization | None = None,
        mosaic_p: float = 0.0,
        name: str = "chips",
    ) -> None:
        """Read the manifest and the split's chip list.

        Args:
            root: The chip folder.
            split: ``train`` or ``val`` (``test`` is empty: chips hold no test split).
            samples_per_epoch: Random chips per epoch (training); None enumerates the chips.
            cache_mb: Keep chips in memory up to this many megabytes.
            transforms: Joint augmentation.
            normalization: Band scaling and standardisation.
            mosaic_p: Mosaic probability.
            name: Dataset name for reports and model cards.
        """
        super().__init__(transforms, normalization, mosaic_p)
        if split not in _SPLITS:
            raise InvalidInputError(f"Unknown chip split '{split}'; choose one of {', '.join(_SPLITS)}.")
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        classes = self.manifest["classes"]
        self.info = DatasetInfo(
            name=name,
            class_names=tuple(str(c["name"]) for c in classes),
            palette=tuple(_hex_to_rgb(c["color"]) for c in classes),
            eval_classes=tuple(range(len(classes))),
            band_names=tuple(self.manifest["band_names"]),
            splits={s: (s,) for s in _SPLITS},
            gsd_m=self.manifest.get("gsd_m"),
        )
        self.split = split
        self.chips = [c for c in self.manifest["chips"] if c["split"] == split]
        self.samples_per_epoch = samples_per_epoch
        weights = np.asarray([c["labelled_px"] for c in self.chips], dtype=np.float64)
        self._weights = weights / weights.sum() if weights.size and weights.sum() > 0 else weights
        self._cache: dict[int, Sample] = {}
        self._cache_bytes = 0
        self._cache_limit = int(cache_mb * 2**20)
        if samples_per_epoch is not None and not self.chips:
            raise InvalidInputError(f"The chip folder '{self.root}' has no '{split}' chips to train on.")

    def __len__(self) -> int:
        """``samples_per_epoch`` in random mode, else the number of chips."""
        return self.samples_per_epoch if self.samples_per_epoch is not None else len(self.chips)

    def chip(self, index: int) -> Sample:
        """Chip ``index`` of the split: image (C, H, W) in its stored type, mask (H, W) int64 (255 = no class)."""
        cached = self._cache.get(index)
        if cached is not None:
            return {"image": cached["image"], "mask": cached["mask"].astype(np.int64)}
        entry = self.chips[index]
        with rasterio.open(self.root / entry["image"]) as src:
            image: NDArray[Any] = src.read()
        with rasterio.open(self.root / entry["label"]) as src:
            mask = src.read(1)
        if mask.shape != image.shape[1:]:
            raise InvalidInputError(f"Chip {entry['id']}: label {mask.shape} and image {image.shape[1:]} differ.")
        size = image.nbytes + mask.nbytes
        if self._cache_bytes + size <= self._cache_limit:
            self._cache[index] = {"image": image, "mask": mask}
            self._cache_bytes += size
        return {"image": image, "mask": mask.astype(np.int64)}

    def load_sample(self, index: int, rng: np.random.Generator) -> Sample:
        """A random chip (training) or chip ``index`` (evaluation)."""
        if self.samples_per_epoch is not None:
            index = int(rng.choice(len(self.chips), p=self._weights))
        return self.chip(index)
