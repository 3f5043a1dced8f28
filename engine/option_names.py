"""How each front end spells the options that engine messages point to, so advice names what the user can type.

Engine messages name options as the Processing parameters do (``BANDS``, ``TILE_SIZE``, ``DEVICE cpu``), which is
what the QGIS plugin shows; :func:`for_command_line` rewrites those names as ``python -m engine segment``'s flags
(``--bands``, ``--tile-size``, ``--device cpu``) outside quoted paths, so each front end names its own options and
no message carries both spellings. Advice that needs a value formatted into it ("use TILE_SIZE 64") is built from
the run's :class:`OptionNames` (:attr:`~engine.inference.request.SegmentationRequest.option_names`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CLI_FLAGS", "CLI_OPTION_NAMES", "PROCESSING_OPTION_NAMES", "OptionNames", "for_command_line"]


@dataclass(frozen=True)
class OptionNames:
    """The spelling of the options messages refer to; ``{}`` marks where a value goes.

    Attributes:
        resample_off: Turning resampling to the model's resolution off.
        resample_on: Leaving resampling on (the default).
        tile_size: Setting the tile size to ``{}`` pixels.
        tile_size_default: Taking the tile size from the model.
        value_scaling: Choosing the value scaling ``{}``.
    """

    resample_off: str
    resample_on: str
    tile_size: str
    tile_size_default: str
    value_scaling: str

    def tile(self, size_px: int) -> str:
        """The option that sets the tile size to ``size_px``."""
        return self.tile_size.format(size_px)

    def scaling(self, mode: str) -> str:
        """The option that chooses the value scaling ``mode``."""
        return self.value_scaling.format(mode)


#: ``python -m engine segment`` flags.
CLI_OPTION_NAMES = OptionNames(
    resample_off="--no-resample",
    resample_on="no --no-resample",
    tile_size="--tile-size {}",
    tile_size_default="no --tile-size",
    value_scaling="--value-scaling {}",
)

#: Parameters of the Processing algorithm ``bicorseg:segmentlandcover``.
PROCESSING_OPTION_NAMES = OptionNames(
    resample_off="RESAMPLE false",
    resample_on="RESAMPLE true",
    tile_size="TILE_SIZE {}",
    tile_size_default="TILE_SIZE 0",
    value_scaling="VALUE_SCALING {}",
)


#: Processing parameter -> command-line flag (parameters without a flag, such as MASK, stay as they are).
CLI_FLAGS: dict[str, str] = {
    "OUTPUT": "--output",
    "HEATMAPS": "--heatmaps",
    "MODEL": "--model",
    "DEVICE": "--device",
    "BACKEND": "--backend",
    "BANDS": "--bands",
    "EXTENT": "--extent",
    "TILE_SIZE": "--tile-size",
    "OVERLAP": "--overlap",
    "BATCH_SIZE": "--batch-size",
    "VALUE_SCALING": "--value-scaling",
    "HBIS_HEATMAPS": "--hbis-heatmaps",
    "HBIS_LAYER": "--hbis-layer",
    "VECTOR_OUTPUT": "--vector",
    "MIN_AREA": "--min-area",
}
_NAMES = re.compile(r"\b(" + "|".join(sorted(CLI_FLAGS, key=len, reverse=True)) + r")\b")
#: "RESAMPLE false" (the boolean parameter switched off) is the flag --no-resample; "RESAMPLE true" is the default.
_RESAMPLE = re.compile(r"\bRESAMPLE (?:false|off|False)\b")
_QUOTED = re.compile(r"('[^']*')")


def for_command_line(message: str) -> str:
    """``message`` with Processing parameter names spelt as command-line flags (quoted text left alone)."""
    parts = _QUOTED.split(message)
    for i in range(0, len(parts), 2):  # even parts lie outside quotes
        text = _RESAMPLE.sub("--no-resample", parts[i])
        parts[i] = _NAMES.sub(lambda match: CLI_FLAGS[match.group(1)], text)
    return "".join(parts)
