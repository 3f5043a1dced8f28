"""The feedback adapter: engine fractions -> monotonic percents, cancel; the engine's log records shown once."""

from __future__ import annotations

import logging

import pytest
from qgis.core import QgsProcessingFeedback

from bicorseg_qgis.feedback import FeedbackProgress, engine_messages_to_feedback

pytestmark = pytest.mark.qgis


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def pushInfo(self, info):
        self.infos.append(info)

    def pushWarning(self, warning):
        self.warnings.append(warning)


def test_fractions_map_into_the_given_span_and_never_go_back(qgis_app):
    feedback = QgsProcessingFeedback()
    seen: list[float] = []
    feedback.progressChanged.connect(seen.append)
    progress = FeedbackProgress(feedback, start_percent=20.0, span_percent=80.0)
    for fraction in (0.0, 0.5, 0.25, 1.2, 1.0):
        progress.set_progress(fraction)
    assert seen == [60.0, 100.0]


def test_cancel_is_read_from_the_feedback(qgis_app):
    feedback = QgsProcessingFeedback()
    progress = FeedbackProgress(feedback)
    assert not progress.is_canceled()
    feedback.cancel()
    assert progress.is_canceled()


def test_engine_messages_reach_the_log_once_each(qgis_app):
    feedback = RecordingFeedback()
    logger = logging.getLogger("bicorseg_qgis.engine.test")
    with engine_messages_to_feedback(feedback, "bicorseg_qgis.engine"):
        logger.warning("nodata value missing; using the alpha band")
        logger.info("Model 'm' runs with onnxruntime on cpu: CPU requested")
        logger.debug("only for the log file")
    logger.warning("after the run: not this feedback's business")
    assert feedback.warnings == ["nodata value missing; using the alpha band"]
    assert feedback.infos == ["Model 'm' runs with onnxruntime on cpu: CPU requested"]
    assert not hasattr(FeedbackProgress(feedback), "log")  # one channel: no second way for the engine to talk


def test_overlapping_runs_keep_the_engine_logger_open_until_the_last_ends(qgis_app):
    logger = logging.getLogger("bicorseg_qgis.engine.overlap")
    before = logging.getLogger("bicorseg_qgis.engine").level
    first, second = RecordingFeedback(), RecordingFeedback()
    with engine_messages_to_feedback(first, "bicorseg_qgis.engine"):
        with engine_messages_to_feedback(second, "bicorseg_qgis.engine"):
            pass
        logger.info("still running")
    assert first.infos == ["still running"]
    assert logging.getLogger("bicorseg_qgis.engine").level == before
