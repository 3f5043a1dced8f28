"""UAVid: oblique UAV video frames (3840x2160 or 4096x2160 px), eight classes, 42 sequences of 10 frames.

Source: https://uavid.nl (CC BY-NC-SA 4.0). Labels are RGB colour PNGs; clutter (0, 0, 0) is a class and is
scored; white (255, 255, 255) and unknown colours are ignored (GeoSeg convention).

Splits: official uavid_train (200) / uavid_val (70) / uavid_test (150, labels hidden: server only).
"""

from __future__ import annotations

from typing import ClassVar, Final

from training.datasets.base import CanonicalDataset, DatasetInfo

UAVID: Final = DatasetInfo(
    name="uavid",
    class_names=("building", "road", "tree", "low_vegetation", "moving_car", "static_car", "human", "clutter"),
    palette=(
        (128, 0, 0),
        (128, 64, 128),
        (0, 128, 0),
        (128, 128, 0),
        (64, 0, 128),
        (192, 0, 192),
        (64, 64, 0),
        (0, 0, 0),
    ),
    eval_classes=(0, 1, 2, 3, 4, 5, 6, 7),
    splits={"train": ("train",), "val": ("val",), "test": ("test",), "train_val": ("train", "val")},
    gsd_m=None,
    protocol="UAVid protocol: mIoU over all 8 classes, clutter included",
)
#: Label colour that means "no class".
UAVID_IGNORE_COLOURS: Final = ((255, 255, 255),)


class UAVid(CanonicalDataset):
    """Prepared UAVid patches (``python -m training.prepare uavid``)."""

    INFO: ClassVar[DatasetInfo] = UAVID
