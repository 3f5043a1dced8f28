"""Classes, colours and scoring protocol shared by the two ISPRS benchmarks (Potsdam and Vaihingen)."""

from __future__ import annotations

from typing import Final

#: Paper (GeoSeg/BiCoR/Hi-ResNet) class order; clutter is last so the protocol can leave it out.
ISPRS_CLASSES: Final = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
#: RGB label colours of the classes above, as read from the label GeoTIFFs (not GeoSeg's BGR triples).
ISPRS_PALETTE: Final = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
#: Black marks the eroded class boundaries in the ``*_noBoundary`` labels: ignored.
ISPRS_BOUNDARY_COLOUR: Final = (0, 0, 0)
#: Paper protocol: mIoU / mF1 over the first five classes (clutter excluded); OA over all six.
ISPRS_EVAL_CLASSES: Final = (0, 1, 2, 3, 4)
ISPRS_PROTOCOL: Final = "ISPRS paper protocol: mIoU/mF1 over 5 classes (clutter excluded), OA over all 6"
ISPRS_SPLITS: Final = {"train": ("train",), "val": ("val",), "test": ("test",), "train_val": ("train", "val")}
