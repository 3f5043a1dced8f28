"""Error hierarchy of the engine: every message names the problem and the fix."""

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
