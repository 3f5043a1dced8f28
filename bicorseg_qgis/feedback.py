"""Adapts QgsProcessingFeedback to the engine's ProgressReporter protocol (progress, cancel, log)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from qgis.core import QgsProcessingFeedback

# Messages this thread already showed through FeedbackProgress.log: the engine both logs and reports some
# warnings, and the user should read each once.
_shown = threading.local()


def _shown_messages() -> set[str]:
    if not hasattr(_shown, "messages"):
        _shown.messages = set()
    messages: set[str] = _shown.messages
    return messages


class FeedbackProgress:
    """Engine progress reporter that drives a Processing feedback object.

    The engine reports fractions 0..1; they map onto ``start_percent .. start_percent + span_percent`` so that
    several steps of one algorithm (e.g. reading a web layer, then segmenting) share one progress bar. The
    percent sent to QGIS never goes down, whatever the engine reports.
    """

    def __init__(
        self, feedback: QgsProcessingFeedback, start_percent: float = 0.0, span_percent: float = 100.0
    ) -> None:
        self._feedback = feedback
        self._start = start_percent
        self._span = span_percent
        self._last = start_percent

    def set_progress(self, fraction: float) -> None:
        """Map an engine fraction (0..1) to the feedback's percent."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        percent = self._start + self._span * fraction
        if percent > self._last:
            self._last = percent
            self._feedback.setProgress(percent)

    def is_canceled(self) -> bool:
        """True once the user pressed Cancel."""
        return bool(self._feedback.isCanceled())

    def log(self, message: str) -> None:
        """Show an engine message in the algorithm log."""
        _shown_messages().add(message)
        self._feedback.pushInfo(message)


class _FeedbackLogHandler(logging.Handler):
    """Forwards warnings the engine logs on this run's thread to the feedback (other runs stay separate)."""

    def __init__(self, feedback: QgsProcessingFeedback, thread_id: int) -> None:
        super().__init__(level=logging.WARNING)
        self._feedback = feedback
        self._thread_id = thread_id

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread_id:
            return
        message = self.format(record)
        if message not in _shown_messages():
            self._feedback.pushWarning(message)


@contextmanager
def engine_warnings_to_feedback(feedback: QgsProcessingFeedback, logger_name: str) -> Iterator[None]:
    """While the block runs, warnings from ``logger_name`` (the engine) appear in the algorithm log."""
    handler = _FeedbackLogHandler(feedback, threading.get_ident())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    _shown_messages().clear()
    try:
        yield
    finally:
        logger.removeHandler(handler)
        _shown_messages().clear()
