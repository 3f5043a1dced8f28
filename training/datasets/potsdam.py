"""ISPRS Potsdam 2D semantic labelling: 38 RGB true orthophoto tiles of 6000x6000 px at 5 cm, six classes.

Source: ISPRS benchmark (by request form). The anchors use the ``2_Ortho_RGB`` images and the eroded
``5_Labels_all_noBoundary`` labels for testing.

Splits (paper protocol, ``training-spec.md`` 1.2): test = the 14 official test tiles, val = 2_10, train = the
other 22 official train tiles; 7_10 is dropped because its labels are faulty.
"""

from __future__ import annotations

from typing import ClassVar, Final

from training.datasets.base import CanonicalDataset, DatasetInfo
from training.datasets.isprs import ISPRS_CLASSES, ISPRS_EVAL_CLASSES, ISPRS_PALETTE, ISPRS_PROTOCOL, ISPRS_SPLITS

#: Tile ids ("2_10") per canonical split folder.
POTSDAM_TILES: Final = {
    "train": (
        "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
        "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_11", "7_12",
    ),
    "val": ("2_10",),
    "test": ("2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14", "6_15", "7_13"),
}  # fmt: skip
#: Official training tile with faulty labels, never used.
POTSDAM_DROPPED: Final = ("7_10",)

POTSDAM: Final = DatasetInfo(
    name="potsdam",
    class_names=ISPRS_CLASSES,
    palette=ISPRS_PALETTE,
    eval_classes=ISPRS_EVAL_CLASSES,
    band_names=("red", "green", "blue"),
    splits=ISPRS_SPLITS,
    gsd_m=0.05,
    protocol=ISPRS_PROTOCOL,
)


class Potsdam(CanonicalDataset):
    """Prepared ISPRS Potsdam RGB patches (``python -m training.prepare potsdam``)."""

    INFO: ClassVar[DatasetInfo] = POTSDAM
