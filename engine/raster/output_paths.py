"""The one check of output paths, made before any work: every front end and the writer get the same messages."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import OutputPathError

__all__ = ["GEOTIFF_SUFFIXES", "check_output_paths"]

logger = logging.getLogger(__name__)

#: Extensions of the files the engine writes (always GeoTIFF).
GEOTIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


def check_output_paths(outputs: Sequence[Path], input_path: Path, vector_outputs: Sequence[Path] = ()) -> None:
    """Fail early, naming the path and the fix, when an output cannot be written or would clobber the input.

    Args:
        outputs: Raster destinations of one run (class raster first, then heatmaps, HBIS heatmaps), GeoTIFF paths.
        input_path: The raster being segmented (never overwritten).
        vector_outputs: Vector destinations of the run (their format is checked by :mod:`engine.raster.vectorize`).

    Raises:
        OutputPathError: For two outputs on the same file, an output on the input, an output that is a folder,
            a missing or unwritable folder, or a read-only existing file.
    """
    rasters = [Path(p) for p in outputs]
    paths = rasters + [Path(p) for p in vector_outputs]
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        same = next(p for p, r in zip(paths, resolved, strict=True) if resolved.count(r) > 1)
        raise OutputPathError(
            f"Two outputs (OUTPUT, HEATMAPS, HBIS_HEATMAPS, VECTOR_OUTPUT) are the same file '{same}'; give each "
            "its own path."
        )
    for path in paths:
        if path.resolve() == Path(input_path).resolve():
            raise OutputPathError(f"Output '{path}' is the input raster; choose another output path.")
        if path.is_dir():
            raise OutputPathError(f"Output '{path}' is a folder; give a file path such as '{path / 'classes.tif'}'.")
        folder = path.resolve().parent
        if not folder.is_dir():
            raise OutputPathError(f"Output folder '{folder}' does not exist; create it or choose another output path.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f"Output folder '{folder}' is not writable; choose a folder you can write to.")
        if path.exists() and not os.access(path, os.W_OK):
            raise OutputPathError(f"Output '{path}' exists and is read-only; delete it or choose another path.")
        if path in rasters and path.suffix.lower() not in GEOTIFF_SUFFIXES:
            logger.warning("Output '%s' is written as GeoTIFF whatever its extension; consider '.tif'.", path)
