"""Write-behind: hand finished rows to the writer on a worker thread, so compression overlaps the model.

The model call (onnxruntime, torch) and most of the writer's work (numpy, GDAL compression) release the GIL, so
one worker thread lets quantising and compressing the outputs run while the next tiles go through the model.
Chunks are copied (the stitching strip reuses its memory) into a fixed pool of buffers, which caps the extra
memory at ``max_chunks`` chunks.
"""

from __future__ import annotations

import queue
import threading
from types import TracebackType
from typing import Protocol, Self

import numpy as np
from numpy.typing import NDArray

__all__ = ["RowWriter", "WriteBehind"]

#: A pool slot: probs buffer (K, rows, width), valid buffer (rows, width), extra buffer (E, rows, width) or None.
_Buffers = tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32] | None]


class RowWriter(Protocol):
    """Anything with :meth:`~engine.raster.writer.SegmentationWriter.write_rows`."""

    def write_rows(
        self,
        row_off: int,
        probs: NDArray[np.float32],
        valid: NDArray[np.bool_],
        extra: NDArray[np.float32] | None = None,
    ) -> None:
        """Write rows ``row_off ..``: (K, rows, width) probabilities, (rows, width) valid mask, (E, rows, width) extra.

        ``extra`` carries further blended channels (BiCoR-Seg's HBIS heatmaps) when the run has them.
        """


def _fits(buffers: _Buffers, probs: NDArray[np.float32], extra: NDArray[np.float32] | None) -> bool:
    """Whether a pool slot can hold these rows (same channels and width, at least as many rows)."""
    rows = probs.shape[1]
    if buffers[0].shape[1] < rows or buffers[0].shape[::2] != probs.shape[::2]:
        return False
    if extra is None:
        return True
    return buffers[2] is not None and buffers[2].shape[1] >= rows and buffers[2].shape[::2] == extra.shape[::2]


class WriteBehind:
    """A :class:`RowWriter` that forwards rows to another one on a worker thread, in order.

    Rows are copied into a fixed pool of ``max_chunks`` reused buffers (allocating and freeing large arrays on
    two threads would let the allocator's per-thread arenas hold on to freed memory). Use it as a context
    manager: leaving the block normally waits for every row to be written and re-raises a worker error; leaving
    it with an exception stops the worker (dropping queued rows) without masking the exception. The wrapped
    writer is used only by the worker until then.
    """

    def __init__(self, writer: RowWriter, max_chunks: int = 2) -> None:
        """Start the worker.

        Args:
            writer: The writer receiving the rows.
            max_chunks: Chunks that may wait or be written at once; :meth:`write_rows` blocks beyond that.
        """
        self._writer = writer
        self._free: queue.Queue[_Buffers | None] = queue.Queue()
        for _ in range(max_chunks):
            self._free.put(None)  # a slot whose buffers are allocated on first use
        self._work_queue: queue.Queue[tuple[int, int, bool, _Buffers] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="bicorseg-write-behind", daemon=True)
        self._thread.start()

    def write_rows(
        self,
        row_off: int,
        probs: NDArray[np.float32],
        valid: NDArray[np.bool_],
        extra: NDArray[np.float32] | None = None,
    ) -> None:
        """Queue a copy of the rows (blocks while every buffer is in use); raises an earlier worker error."""
        self._raise_worker_error()
        buffers = self._free.get()
        rows = probs.shape[1]
        if buffers is None or not _fits(buffers, probs, extra):
            buffers = (
                np.empty(probs.shape, dtype=np.float32),
                np.empty(valid.shape, dtype=bool),
                None if extra is None else np.empty(extra.shape, dtype=np.float32),
            )
        buffers[0][:, :rows] = probs
        buffers[1][:rows] = valid
        if extra is not None and buffers[2] is not None:
            buffers[2][:, :rows] = extra
        self._work_queue.put((row_off, rows, extra is not None, buffers))

    def _work(self) -> None:
        while True:
            item = self._work_queue.get()
            if item is None:
                return
            row_off, rows, has_extra, buffers = item
            if self._error is None and not self._stop.is_set():
                try:
                    if not has_extra or buffers[2] is None:
                        self._writer.write_rows(row_off, buffers[0][:, :rows], buffers[1][:rows])
                    else:
                        self._writer.write_rows(
                            row_off, buffers[0][:, :rows], buffers[1][:rows], extra=buffers[2][:, :rows]
                        )
                except BaseException as exc:  # noqa: BLE001 - handed to the producer thread, which re-raises it
                    self._error = exc
            self._free.put(buffers)  # always return the slot, so a blocked producer wakes up

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, wait: bool = True) -> None:
        """Stop the worker after the queued rows (``wait``) or dropping them; then re-raise a worker error."""
        if not wait:
            self._stop.set()
        self._work_queue.put(None)
        self._thread.join()
        if wait:
            self._raise_worker_error()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close(wait=exc_type is None)
