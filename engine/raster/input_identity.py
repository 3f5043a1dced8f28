"""Noticing an input that changes while it is segmented.

A raster overwritten half-way through a run gives a class raster whose top rows come from the old image and the
bottom rows from the new one. :class:`InputIdentity` records, when the input is opened, the identity (device and
inode), size and modification time of every file GDAL reads for it (a VRT's sources too, not the PAM sidecars or
external overviews that viewers may write meanwhile); the writer checks them again just before it commits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidRasterError

__all__ = ["FileIdentity", "InputIdentity"]

#: Files next to a raster that others may (re)write without changing its pixels.
_SIDECAR_SUFFIXES = (".aux.xml", ".ovr")


@dataclass(frozen=True)
class FileIdentity:
    """What identifies one version of a file.

    Attributes:
        path: The file.
        device: ``st_dev``.
        inode: ``st_ino`` (a file replaced by ``mv`` gets a new one).
        size_bytes: ``st_size``.
        mtime_ns: ``st_mtime_ns`` (a file rewritten in place gets a new one).
    """

    path: Path
    device: int
    inode: int
    size_bytes: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        """The identity of ``path`` now, or None if it does not exist (or cannot be examined)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(Path(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class InputIdentity:
    """The identities of an input's files when it was opened.

    Attributes:
        name: The input as the user gave it (named in the error).
        files: One :class:`FileIdentity` per local file GDAL reads for it.
    """

    name: str
    files: tuple[FileIdentity, ...]

    @classmethod
    def of(cls, name: str, paths: Iterable[str]) -> InputIdentity:
        """Record the files of an input (``paths``: GDAL's file list; remote and virtual paths are skipped)."""
        files = []
        for path in dict.fromkeys(paths):
            if path.startswith("/vsi") or "://" in path or path.lower().endswith(_SIDECAR_SUFFIXES):
                continue
            identity = FileIdentity.of(Path(path))
            if identity is not None:
                files.append(identity)
        return cls(name, tuple(files))

    def check_unchanged(self) -> None:
        """Raise if any recorded file was replaced, rewritten, resized or removed since.

        Raises:
            InvalidRasterError: Naming the file and what changed; the caller then writes nothing.
        """
        for before in self.files:
            now = FileIdentity.of(before.path)
            if now == before:
                continue
            if now is None:
                what = "was deleted"
            elif (now.device, now.inode) != (before.device, before.inode):
                what = "was replaced by another file"
            elif now.size_bytes != before.size_bytes:
                what = f"changed size from {before.size_bytes} to {now.size_bytes} bytes"
            else:
                what = "was modified"
            source = "" if str(before.path) == self.name else f" (its source '{before.path}')"
            raise InvalidRasterError(
                f"Input raster '{self.name}'{source} {what} while it was being segmented, so the result would mix two "
                "versions of it; nothing was written. Run again once the file is no longer being written."
            )
