"""Send the model file to every worker once (``--upload-model``), for clusters without a shared file system.

:class:`ModelUpload` is a Dask worker plugin holding the file's bytes: the scheduler hands it to each worker when
it is registered and to every worker that joins later (a restarted one too), and the worker writes the file into
its local directory. Tasks then carry only a :class:`~engine.distributed.worker.ModelRef` with ``uploaded=True``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .worker import uploaded_model_path

__all__ = ["ModelUpload"]


class ModelUpload(WorkerPlugin):  # type: ignore[misc]
    """A worker plugin that writes one model file into each worker's local directory."""

    def __init__(self, payload: bytes, sha256: str, suffix: str) -> None:
        """Hold the file.

        Args:
            payload: The model file's bytes.
            sha256: Their SHA-256 (names the file and the plugin).
            suffix: The file's extension (``.onnx``, ``.pt``, ...), which tells the engine its kind.
        """
        self.name = f"bicorseg-model-{sha256[:16]}"
        self._payload = payload
        self._sha256 = sha256
        self._suffix = suffix

    def setup(self, worker: Any) -> None:
        """Write the file (atomically) unless this worker already has it."""
        path = uploaded_model_path(worker.local_directory, self._sha256, self._suffix)
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        Path(temp).write_bytes(self._payload)
        os.replace(temp, path)
