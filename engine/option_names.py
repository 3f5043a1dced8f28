"""Option names in engine messages, spelt for each front end.

Engine messages name options as the Processing parameters do (``BANDS``, ``TILE_SIZE``, ``DEVICE cpu``), which is
what the QGIS plugin shows. :func:`for_command_line` rewrites those names as ``python -m engine segment``'s flags
(``--bands``, ``--tile-size``, ``--device cpu``), outside quoted paths, so each front end names its own options and
no message carries both spellings.
"""

from __future__ import annotations

import re

__all__ = ["CLI_FLAGS", "for_command_line"]

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
