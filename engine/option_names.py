"""How each front end spells the options that engine messages point to, so advice names what the user can type.

Engine messages name options one way only, as the Processing parameters do (``BANDS``, ``TILE_SIZE 64``,
``RESAMPLE false``, ``DEVICE cpu``), which is what the QGIS plugin shows; :func:`for_command_line` rewrites those
names as ``python -m engine segment``'s flags (``--bands``, ``--tile-size 64``, ``--no-resample``, ``--device
cpu``) outside quoted paths, so each front end names its own options and no message carries both spellings.
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
#: "RESAMPLE false" (the boolean parameter switched off) is the flag --no-resample; "RESAMPLE true", the default,
#: is leaving that flag out, as "TILE_SIZE 0" (the card's tile size) is leaving --tile-size out.
_RESAMPLE = re.compile(r"\bRESAMPLE (?:false|off|False)\b")
_DEFAULTS = {"RESAMPLE true": "no --no-resample", "TILE_SIZE 0": "no --tile-size"}
_DEFAULT = re.compile(r"\b(RESAMPLE true|TILE_SIZE 0)\b")
#: A quoted path: a quote not after a letter up to one not before a letter (an apostrophe, "the model's", is neither).
_QUOTED = re.compile(r"((?<!\w)'[^']*'(?!\w))")


def for_command_line(message: str) -> str:
    """``message`` with Processing parameter names spelt as command-line flags (quoted text left alone)."""
    parts = _QUOTED.split(message)
    for i in range(0, len(parts), 2):  # even parts lie outside quotes
        text = _DEFAULT.sub(lambda match: _DEFAULTS[match.group(1)], parts[i])
        text = _RESAMPLE.sub("--no-resample", text)
        parts[i] = _NAMES.sub(lambda match: CLI_FLAGS[match.group(1)], text)
    return "".join(parts)
