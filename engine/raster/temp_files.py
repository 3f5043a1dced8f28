"""Names of the writer's temporary files, and removing the ones that killed runs left behind.

Outputs are written to hidden temporaries beside them and moved into place on commit; a failure, a cancel, Ctrl-C,
SIGTERM or SIGHUP removes them. Only SIGKILL (or a power cut) leaves them, so every temporary carries a
recognisable name with the machine and the process that owns it::

    .classes.bicorseg-3f9a1c-48213-0c1d2e3f4a5b.final.tmp.tif
             ^prefix  ^host  ^pid  ^run token  ^kind

and the next run writing into that folder removes those of processes that no longer exist on this machine (never
a live process's, never another machine's: a folder on a network share may be written from several).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import uuid
from pathlib import Path

__all__ = ["TEMP_PREFIX", "new_run_token", "process_alive", "remove_stale_temporaries", "temp_path"]

logger = logging.getLogger(__name__)

#: Marks the engine's temporaries in a file name.
TEMP_PREFIX = "bicorseg"
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8"), usedforsecurity=False).hexdigest()[:6]
_TEMP_NAME = re.compile(
    rf"^\..+\.{TEMP_PREFIX}-(?P<host>[0-9a-f]{{6}})-(?P<pid>\d+)-[0-9a-f]{{12}}\.[a-z.]+\.tmp\.tif(\.aux\.xml)?$"
)


def new_run_token() -> str:
    """The part of the temporaries' names shared by one writer: host, process id and a random token."""
    return f"{TEMP_PREFIX}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def temp_path(final: Path, token: str, kind: str) -> Path:
    """The hidden temporary of ``final`` for this run (``kind``: ``final``, ``grid``, ``final.cog``...)."""
    return final.with_name(f".{final.stem}.{token}.{kind}.tmp.tif")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when it cannot be told: never delete on a doubt)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _windows_process_alive(pid: int) -> bool:  # pragma: no cover - exercised on Windows only
    import ctypes

    kernel32 = getattr(ctypes, "WinDLL")("kernel32", use_last_error=True)  # noqa: B009 - Windows-only name
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        last_error = int(getattr(ctypes, "get_last_error")())  # noqa: B009 - Windows-only name
        return last_error != 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return bool(code.value == 259)  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete this machine's temporaries in ``folder`` whose owning process is gone; returns the bytes freed."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    count = freed = 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match["host"] != _HOST or process_alive(int(match["pid"])):
            continue
        try:
            size = entry.stat().st_size
            os.unlink(entry.path)
        except OSError as exc:  # someone else removed it, or it is not ours to remove: leave it
            logger.debug("Could not remove leftover %s: %s", entry.path, exc)
            continue
        count += 1
        freed += size
    if count:
        logger.info(
            "Removed %d temporary file(s) (%.1f MB) that killed runs had left in '%s'.", count, freed / 2**20, folder
        )
    return freed
