"""The feedback adapter: engine fractions -> monotonic percents, cancel, and engine log lines shown once."""

from __future__ import annotations

import logging

import pytest
from qgis.core import QgsProcessingFeedback

from bicorseg_qgis.feedback import FeedbackProgress, engine_warnings_to_feedback

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


def test_engine_warnings_reach_the_log_once(qgis_app):
    feedback = RecordingFeedback()
    logger = logging.getLogger("bicorseg_qgis.engine.test")
    progress = FeedbackProgress(feedback)
    with engine_warnings_to_feedback(feedback, "bicorseg_qgis.engine"):
        logger.warning("nodata value missing; using the alpha band")
        progress.log("said through progress")
        logger.warning("said through progress")  # the engine's _say does both: show it once
        logger.info("only for the log file")
    logger.warning("after the run: not this feedback's business")
    assert feedback.warnings == ["nodata value missing; using the alpha band"]
    assert feedback.infos == ["said through progress"]
