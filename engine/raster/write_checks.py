"""Checked writes: free space before each block row, complete files after each close, failures in one line.

GDAL does not always report a failed write: with multi-threaded compression a full disk shows only as messages on
stderr, ``close()`` returns normally and the file is left with blocks that point past its end (``TIFFFillTile:
Read error`` when it is read back). So the writer does not trust GDAL's silence:

* :func:`check_free_space` refuses a block row that cannot fit (uncompressed) into the free space of its folder,
  before GDAL is asked to write it;
* :func:`verify_geotiff` runs after every close: it flushes the file to the disk (``fsync``, which also reports
  delayed write-back errors such as a full network share or quota) and checks that every block of every band
  lies inside the file and is not empty;
* :func:`write_failure` turns whatever went wrong into one :class:`~engine.errors.OutputPathError` line: "no
  space left on the device of PATH" when the folder is full, else the operating system's or GDAL's own reason.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import warnings

# Only ever parses sidecars written for the engine's own temporary outputs, never user input.
import xml.etree.ElementTree as ET  # nosec B405
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ..errors import OutputPathError, root_cause

__all__ = ["FULL_DISK_BYTES", "check_free_space", "free_bytes", "verify_geotiff", "verify_sidecar", "write_failure"]

logger = logging.getLogger(__name__)

#: Free space below which a failed write is reported as a full disk.
FULL_DISK_BYTES = 1 << 20
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def free_bytes(folder: Path) -> int | None:
    """Bytes free for this user in ``folder``'s file system, or None where the system cannot tell."""
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def check_free_space(path: Path, needed_bytes: int, shown: Path | None = None) -> None:
    """Refuse to write ``needed_bytes`` more into ``path`` when its folder has less room than that.

    Args:
        path: The file about to grow (a temporary).
        needed_bytes: An upper bound of what the write adds (the uncompressed size).
        shown: The path the user knows (the output the temporary becomes); default ``path``.

    Raises:
        OutputPathError: "no space left on the device of PATH", with what is free and what was needed.
    """
    free = free_bytes(path.parent)
    if free is not None and free < needed_bytes:
        raise OutputPathError(_no_space_message(shown or path, free, needed_bytes))


def verify_geotiff(path: Path, shown: Path | None = None) -> None:
    """Make sure a GeoTIFF just closed is on the disk and complete (see the module docstring).

    Args:
        path: The file just closed (a temporary).
        shown: The path the user knows, named in the error; default ``path``.

    Raises:
        OutputPathError: Naming the file and the reason (full disk, OS error, or the missing blocks).
    """
    shown = shown or path
    _fsync(path, shown)
    try:
        size = path.stat().st_size
        with warnings.catch_warnings():  # our own output: without a geotransform when the input had none
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
        with dataset:
            bands = (
                (1,) if dataset.interleaving is not None and dataset.interleaving.name == "PIXEL" else dataset.indexes
            )
            rows = -(-dataset.height // dataset.block_shapes[0][0])
            cols = -(-dataset.width // dataset.block_shapes[0][1])
            for band in bands:
                for row in range(rows):
                    for col in range(cols):
                        offset = dataset.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                        nbytes = dataset.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                        if not offset or not nbytes or int(offset) + int(nbytes) > size:
                            raise write_failure(shown, None, f"block {row},{col} of band {band} did not reach the disk")
    except OutputPathError:
        raise
    except (RasterioError, OSError, ValueError) as exc:
        raise write_failure(shown, exc) from exc


def verify_sidecar(path: Path, shown: Path | None = None) -> None:
    """Check a PAM sidecar (``.aux.xml``) written beside a temporary output, if there is one: complete and on disk.

    Raises:
        OutputPathError: If it is truncated (GDAL writes it on close and reports a failure only on stderr) or
            cannot be flushed to the disk.
    """
    if not path.exists():
        return
    shown = shown or path
    _fsync(path, shown)
    try:
        ET.parse(path)  # nosec B314 - the sidecar GDAL or the writer just wrote for our own temporary output
    except (ET.ParseError, OSError) as exc:
        raise write_failure(shown, exc, "the file came out incomplete") from exc


def write_failure(path: Path, exc: BaseException | None, detail: str | None = None) -> OutputPathError:
    """One-line error for a write that failed with ``exc`` (or was found incomplete: ``detail``).

    Args:
        path: The path the user knows (an output, not its temporary): named in the message, and its folder's free
            space decides whether the disk is full.
        exc: What was raised, if anything; its chain is searched for an OS errno and GDAL's own message.
        detail: What was found wrong when nothing was raised.
    """
    free = free_bytes(path.parent)
    os_error = _os_error(exc)
    if (os_error is not None and os_error.errno in _NO_SPACE_ERRNOS) or (free is not None and free < FULL_DISK_BYTES):
        return OutputPathError(_no_space_message(path, free, None))
    if os_error is not None and os_error.errno is not None:
        reason = os_error.strerror or os.strerror(os_error.errno)
    else:
        reason = detail or root_cause(exc) or "the file came out incomplete"
    if isinstance(exc, ET.ParseError):
        reason = detail or "the file came out incomplete"
    return OutputPathError(
        f"Writing '{path.name}' in '{path.parent}' failed ({reason}); nothing was written. Check the disk and its "
        "free space, or choose another folder."
    )


def _no_space_message(path: Path, free: int | None, needed: int | None) -> str:
    amounts = ""
    if free is not None:
        amounts = f" ({_megabytes(free)} free" + ("" if needed is None else f", {_megabytes(needed)} needed") + ")"
    return (
        f"No space left on the device of '{path.parent}'{amounts} while writing '{path.name}'; nothing was "
        "written. Free some space or choose an output folder on another disk."
    )


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MB"


def _fsync(path: Path, shown: Path) -> None:
    try:
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    except OSError as exc:
        raise write_failure(shown, exc) from exc


def _os_error(exc: BaseException | None) -> OSError | None:
    """The first exception in the chain that carries an operating-system errno."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
