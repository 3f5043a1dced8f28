"""LoveDA: 5987 RGB images of 1024x1024 px at 0.3 m, urban and rural scenes, seven land-cover classes.

Source: Zenodo record 5706578 (CC BY-NC-SA 4.0), https://github.com/Junjue-Wang/LoveDA. Raw masks hold
0 = no-data and 1..7 = classes; the canonical masks hold 0..6 and 255 for no-data.

Splits: official Train / Val / Test (test labels hidden: score on the Codabench server). ``train_val`` is what
the papers train on for test submissions; never report val scores of a model trained on it.
"""

from __future__ import annotations

from typing import ClassVar, Final

from training.datasets.base import CanonicalDataset, DatasetInfo

LOVEDA: Final = DatasetInfo(
    name="loveda",
    class_names=("background", "building", "road", "water", "barren", "forest", "agricultural"),
    palette=(
        (255, 255, 255),
        (255, 0, 0),
        (255, 255, 0),
        (0, 0, 255),
        (159, 129, 183),
        (0, 255, 0),
        (255, 195, 128),
    ),
    eval_classes=(0, 1, 2, 3, 4, 5, 6),
    splits={"train": ("train",), "val": ("val",), "test": ("test",), "train_val": ("train", "val")},
    gsd_m=0.3,
    protocol="LoveDA protocol: mIoU over all 7 classes (no-data ignored)",
)
#: Largest raw class value; raw 0 is no-data.
LOVEDA_RAW_MAX: Final = 7


class LoveDA(CanonicalDataset):
    """Prepared LoveDA images (``python -m training.prepare loveda``); urban and rural scenes together."""

    INFO: ClassVar[DatasetInfo] = LOVEDA
