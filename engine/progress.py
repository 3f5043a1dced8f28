"""Progress reporting and cancellation between the pipeline and its caller.

The pipeline never prints and never polls a GUI. It reports progress to a :class:`ProgressReporter`, which the
QGIS plugin adapts to ``QgsProcessingFeedback`` and the command line to a tqdm bar on stderr. Messages are not
part of it: the engine says things through :mod:`logging` only, and each front end attaches one handler (the
command line prints them on stderr, the plugin forwards them to the algorithm log), so each appears once.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Protocol, Self, TextIO, runtime_checkable

__all__ = ["NullProgress", "ProgressReporter", "SubProgress", "TqdmProgress"]


@runtime_checkable
class ProgressReporter(Protocol):
    """What the pipeline needs from its caller to report progress and learn about cancellation."""

    def set_progress(self, fraction: float) -> None:
        """Report the finished fraction of the work, 0.0 .. 1.0, never decreasing."""

    def is_canceled(self) -> bool:
        """Whether the user asked to stop; checked between batches of tiles."""
        ...


class NullProgress:
    """A reporter that shows nothing and is never canceled."""

    def set_progress(self, fraction: float) -> None:
        """Ignore the progress."""

    def is_canceled(self) -> bool:
        """Never canceled."""
        return False


class TqdmProgress:
    """A command-line progress bar (tqdm) on stderr (the command line's log handler prints above it).

    Cancellation on the command line is Ctrl-C (a ``KeyboardInterrupt``), so :meth:`is_canceled` is False.
    The bar appears with the first progress, so a run that fails during its checks prints only its error.
    Use it as a context manager so the bar is closed whatever happens.
    """

    _STEPS = 1000  # bar resolution: 0.1 %

    def __init__(self, description: str = "segmenting", stream: TextIO | None = None, disable: bool = False) -> None:
        """Prepare the bar.

        Args:
            description: Text shown left of the bar.
            stream: Where the bar and messages go; stderr by default so stdout stays clean for JSON output.
            disable: Hide the bar (messages are still written).
        """
        self._stream = stream if stream is not None else sys.stderr
        self._description = description
        self._disable = disable
        self._bar: Any = None
        self._done = 0

    def set_progress(self, fraction: float) -> None:
        """Advance the bar to ``fraction`` (values below the current position are ignored)."""
        if self._bar is None:
            from tqdm import tqdm  # the plugin never needs tqdm, so only the command line pays for it

            self._bar = tqdm(
                total=self._STEPS,
                desc=self._description,
                file=self._stream,
                disable=self._disable,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
            )
        target = round(min(max(fraction, 0.0), 1.0) * self._STEPS)
        if target > self._done:
            self._bar.update(target - self._done)
            self._done = target

    def is_canceled(self) -> bool:
        """Never canceled: Ctrl-C interrupts the command line directly."""
        return False

    def close(self) -> None:
        """Close the bar, if it was ever shown."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class SubProgress:
    """A part of another reporter's range: fractions 0..1 here map to ``start .. start + span`` there.

    Cancellation passes through unchanged (messages go through logging, not through reporters).
    """

    def __init__(self, parent: ProgressReporter, start: float, span: float) -> None:
        """Map this reporter onto ``[start, start + span]`` of ``parent``."""
        self._parent = parent
        self._start = start
        self._span = span

    def set_progress(self, fraction: float) -> None:
        """Report ``start + span * fraction`` to the parent."""
        self._parent.set_progress(self._start + self._span * min(max(fraction, 0.0), 1.0))

    def is_canceled(self) -> bool:
        """Whether the parent was canceled."""
        return self._parent.is_canceled()
