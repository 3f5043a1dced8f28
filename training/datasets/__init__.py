"""Dataset registry: ``build_dataset(name, root=..., split=..., **options)`` and the classes it resolves.

Every dataset returns ``{"image": float32 (C, H, W) normalised, "mask": int64 (H, W)}`` with 255 = ignore.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError
from training.datasets.base import (
    IGNORE_INDEX,
    CanonicalDataset,
    DatasetInfo,
    DatasetNotFoundError,
    SegmentationDataset,
)
from training.datasets.chips import ChipDataset
from training.datasets.colour_masks import ColourMaskDataset, DubaiAerial
from training.datasets.loveda import LOVEDA, LoveDA
from training.datasets.potsdam import POTSDAM, Potsdam
from training.datasets.uavid import UAVID, UAVid
from training.datasets.vaihingen import VAIHINGEN, Vaihingen

__all__ = [
    "DATASETS",
    "DATASET_INFOS",
    "IGNORE_INDEX",
    "CanonicalDataset",
    "ChipDataset",
    "ColourMaskDataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DubaiAerial",
    "SegmentationDataset",
    "build_dataset",
    "list_datasets",
]

#: name -> dataset class; every class takes ``(root, split, transforms=..., normalization=..., mosaic_p=...)``.
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "loveda": LoveDA,
    "potsdam": Potsdam,
    "vaihingen": Vaihingen,
    "uavid": UAVid,
    "colour_masks": ColourMaskDataset,
    "dubai_aerial": DubaiAerial,
    "chips": ChipDataset,
}
#: Fixed class lists of the benchmark datasets (colour-mask datasets take theirs from the config).
DATASET_INFOS: dict[str, DatasetInfo] = {"loveda": LOVEDA, "potsdam": POTSDAM, "vaihingen": VAIHINGEN, "uavid": UAVID}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    return sorted(DATASETS)


def build_dataset(name: str, root: str | Path, split: str, **options: Any) -> SegmentationDataset:
    """Build a registered dataset.

    Args:
        name: A name from :func:`list_datasets`.
        root: Dataset folder (the prepared ``--out`` folder, or the raw folder for colour-mask datasets).
        split: Split name (``train``, ``val``, ``test``, ...).
        **options: ``transforms``, ``normalization``, ``mosaic_p`` and the dataset's own options.

    Raises:
        InvalidInputError: Unknown name or option.
    """
    if name not in DATASETS:
        raise InvalidInputError(f"Unknown dataset '{name}'; choose one of {', '.join(list_datasets())}.")
    factory = DATASETS[name]
    try:
        inspect.signature(factory).bind(root, split, **options)
    except TypeError as exc:
        raise InvalidInputError(f"Bad options for dataset '{name}': {exc}; check the config's data section.") from exc
    return factory(root, split, **options)
