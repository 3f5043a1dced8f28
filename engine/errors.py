"""Error hierarchy of the engine: every message names the problem and the fix.

Messages name options by their Processing parameter names (``BANDS``, ``TILE_SIZE``, ``DEVICE cpu``, ``RESAMPLE
false``...), never by a command-line flag: the QGIS plugin shows them as they are, the command line spells them as
its flags (:func:`engine.option_names.for_command_line`). Paths in messages are quoted (``'...'``).
"""

from __future__ import annotations


class BiCoRSegError(Exception):
    """Root of every error the engine raises on purpose."""


class InvalidInputError(BiCoRSegError, ValueError):
    """A user-supplied value (path, band list, size, option) is unusable."""


class InvalidRasterError(InvalidInputError):
    """The input raster is missing, unreadable or does not fit the model."""


class ModelCardError(InvalidInputError):
    """A model card is missing, malformed or has an invalid field."""


class ModelLoadError(InvalidInputError):
    """A model file is missing, corrupt or of an unknown format."""


class OutputPathError(BiCoRSegError, OSError):
    """An output path cannot be written."""


class BackendUnavailableError(BiCoRSegError, ImportError):
    """A backend library (torch, onnxruntime) or device (CUDA) is not usable."""


class DistributedRunError(BiCoRSegError):
    """A distributed run failed on its cluster (workers lost, a task failed for a reason that is not bad input)."""


class CanceledError(BiCoRSegError):
    """The user canceled the run; no output was left behind."""


class OutOfMemoryError(BiCoRSegError, MemoryError):
    """Memory ran out (a Python ``MemoryError``, or the model runtime failed to allocate); nothing was written."""

    def __init__(self, detail: str = "") -> None:
        """Build the message with the fix (smaller batches or tiles) and, if known, what failed to allocate."""
        where = f" ({detail})" if detail else ""
        super().__init__(
            f"Out of memory{where}; nothing was written: lower BATCH_SIZE or TILE_SIZE, or process a smaller EXTENT."
        )


def root_cause(exc: BaseException | None) -> str:
    """The innermost meaningful message of an exception chain, on one line.

    rasterio raises ``"Read failed. See previous exception for details."`` (or ``Write failed...``) above GDAL's
    own error, which names the actual problem (a missing VRT source, a truncated file): that is the one to show.

    Returns:
        The deepest message that is not such a pointer, or ``""``.
    """
    message = ""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).split())
        if text and "see previous exception" not in text.lower():
            message = text
        exc = exc.__cause__ or exc.__context__
    return message
