"""Training package: datasets, transforms, losses, trainer and evaluation for the segmentation models.

The public API below is what the QGIS plugin may use (its ``bicorseg:trainmodel`` and ``bicorseg:exporttrainingdata``
algorithms, through ``bicorseg_qgis.training``); names are imported on first use, so importing the package costs
nothing and needs neither torch nor numpy. Chips and labels (:mod:`training.chips`, :mod:`training.labels`) need
numpy and rasterio only; fine-tuning (:mod:`training.finetune`) needs torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_PUBLIC: dict[str, str] = {
    "ChipRequest": "chips",
    "ChipSet": "chips",
    "DEFAULT_VALIDATION_SHARE": "chips",
    "write_chips": "chips",
    "ClassScheme": "labels",
    "LabelClass": "labels",
    "LabelFeature": "labels",
    "PolygonLabels": "labels",
    "RasterLabels": "labels",
    "normalise_value": "labels",
    "ARCHITECTURES": "finetune",
    "FinetuneRequest": "finetune",
    "FinetuneResult": "finetune",
    "run_finetune": "finetune",
}

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_VALIDATION_SHARE",
    "ChipRequest",
    "ChipSet",
    "ClassScheme",
    "FinetuneRequest",
    "FinetuneResult",
    "LabelClass",
    "LabelFeature",
    "PolygonLabels",
    "RasterLabels",
    "normalise_value",
    "run_finetune",
    "write_chips",
]


def __getattr__(name: str) -> Any:
    """Import public names lazily from their submodules."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'training' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
