"""The engine and QgsProcessingFeedback: progress and cancel (FeedbackProgress), messages (one log handler).

The engine says things through :mod:`logging` only; :func:`engine_messages_to_feedback` attaches the one handler
that forwards them to the algorithm log while a run lasts, so each message appears there exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from qgis.core import QgsProcessingFeedback


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


class _FeedbackLogHandler(logging.Handler):
    """Forwards what the engine logs on this run's thread to the feedback: INFO as info, WARNING and up as warnings.

    Records of other threads belong to other runs (QGIS runs algorithms in parallel) and stay out of this log.
    """

    def __init__(self, feedback: QgsProcessingFeedback, thread_id: int) -> None:
        super().__init__(level=logging.INFO)
        self._feedback = feedback
        self._thread_id = thread_id

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread_id:
            return
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self._feedback.pushWarning(message)
        else:
            self._feedback.pushInfo(message)


_level_lock = threading.Lock()
_runs_by_logger: dict[str, tuple[int, int]] = {}  # logger name -> (runs attached, level before the first)


@contextmanager
def engine_messages_to_feedback(feedback: QgsProcessingFeedback, logger_name: str) -> Iterator[None]:
    """While the block runs, the engine's messages (``logger_name`` and below, INFO and up) reach the feedback.

    The engine logger is opened to INFO for as long as any run is attached (runs may overlap), then restored.
    """
    handler = _FeedbackLogHandler(feedback, threading.get_ident())
    logger = logging.getLogger(logger_name)
    with _level_lock:
        runs, level = _runs_by_logger.get(logger_name, (0, logger.level))
        _runs_by_logger[logger_name] = (runs + 1, level)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield
    finally:
        with _level_lock:
            logger.removeHandler(handler)
            runs, level = _runs_by_logger.pop(logger_name)
            if runs > 1:
                _runs_by_logger[logger_name] = (runs - 1, level)
            else:
                logger.setLevel(level)
