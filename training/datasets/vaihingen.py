"""ISPRS Vaihingen 2D semantic labelling: 33 NIR-R-G true orthophoto tiles at 9 cm, six classes.

Source: ISPRS benchmark (by request form; https://www.isprs.org/education/benchmarks/UrbanSemLab/). Bands are
**NIR, red, green** (IRRG), so models trained here must be fed NIR-R-G.

Splits (UNetFormer/GeoSeg paper protocol, see ``training-spec.md`` 1.1): test = the 17 official test tiles,
val = area30, train = the other 15 labelled tiles. Unlike GeoSeg, model selection uses val, never test.
"""

from __future__ import annotations

from typing import ClassVar, Final

from training.datasets.base import CanonicalDataset, DatasetInfo
from training.datasets.isprs import ISPRS_CLASSES, ISPRS_EVAL_CLASSES, ISPRS_PALETTE, ISPRS_PROTOCOL, ISPRS_SPLITS

VAIHINGEN_TRAIN_AREAS: Final = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 32, 34, 37)
VAIHINGEN_VAL_AREAS: Final = (30,)
VAIHINGEN_TEST_AREAS: Final = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
#: Tile ids ("area1") per canonical split folder.
VAIHINGEN_TILES: Final = {
    "train": tuple(f"area{n}" for n in VAIHINGEN_TRAIN_AREAS),
    "val": tuple(f"area{n}" for n in VAIHINGEN_VAL_AREAS),
    "test": tuple(f"area{n}" for n in VAIHINGEN_TEST_AREAS),
}

VAIHINGEN: Final = DatasetInfo(
    name="vaihingen",
    class_names=ISPRS_CLASSES,
    palette=ISPRS_PALETTE,
    eval_classes=ISPRS_EVAL_CLASSES,
    band_names=("nir", "red", "green"),
    splits=ISPRS_SPLITS,
    gsd_m=0.09,
    protocol=ISPRS_PROTOCOL,
)


class Vaihingen(CanonicalDataset):
    """Prepared ISPRS Vaihingen patches (``python -m training.prepare vaihingen``); images are NIR-R-G."""

    INFO: ClassVar[DatasetInfo] = VAIHINGEN
