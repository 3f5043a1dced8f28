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


def check_output_paths(outputs: Sequence[Path], input_path: Path | None, vector_outputs: Sequence[Path] = ()) -> None:
    """Fail early, naming the path and the fix, when an output cannot be written or would clobber the input.

    Every front end makes this one check, so the command line and QGIS agree: a missing output folder is created
    (as QGIS's own raster writers do), and a raster extension GDAL would not write as a GeoTIFF is refused.

    Args:
        outputs: Raster destinations of one run (class raster first, then heatmaps, HBIS heatmaps), GeoTIFF paths.
        input_path: The raster being segmented (never overwritten); None when not known yet.
        vector_outputs: Vector destinations of the run (their format is checked by :mod:`engine.raster.vectorize`).

    Raises:
        OutputPathError: For a raster extension other than .tif/.tiff, two outputs on the same file, an output on
            the input, an output that is a folder, a folder that cannot be created or written, or a read-only
            existing file.
    """
    rasters = [Path(p) for p in outputs]
    paths = rasters + [Path(p) for p in vector_outputs]
    for path in paths:
        if path.is_dir():
            raise OutputPathError(f"Output '{path}' is a folder; give a file path such as '{path / 'classes.tif'}'.")
    for path in rasters:
        if path.suffix.lower() not in GEOTIFF_SUFFIXES:
            raise OutputPathError(
                f"Output '{path}' must be a GeoTIFF (.tif or .tiff), the only format the engine writes; change its "
                "file extension."
            )
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        same = next(p for p, r in zip(paths, resolved, strict=True) if resolved.count(r) > 1)
        raise OutputPathError(
            f"Two outputs (OUTPUT, HEATMAPS, HBIS_HEATMAPS, VECTOR_OUTPUT) are the same file '{same}'; give each "
            "its own path."
        )
    for path in paths:
        if input_path is not None and path.resolve() == Path(input_path).resolve():
            raise OutputPathError(f"Output '{path}' is the input raster; choose another output path.")
        folder = path.resolve().parent
        if not folder.is_dir():
            _create_folder(folder)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f"Output folder '{folder}' is not writable; choose a folder you can write to.")
        if path.exists() and not os.access(path, os.W_OK):
            raise OutputPathError(f"Output '{path}' exists and is read-only; delete it or choose another path.")


def _create_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Output folder '{folder}' does not exist and cannot be created ({exc.strerror or exc}); choose another "
            "output path."
        ) from exc
    logger.info("Created the output folder '%s'.", folder)
