"""Dataset protocols: ISPRS leaves clutter out of the means but not out of OA; LoveDA uses all classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.datasets import DATASET_INFOS
from training.metrics import MetricTracker, evaluate_confusion


def isprs_matrix() -> np.ndarray:
    """Classes 0-4 perfect (10 px each); clutter (5) has 10 px, all predicted as class 0."""
    cm = np.diag([10, 10, 10, 10, 10, 0]).astype(np.int64)
    cm[5, 0] = 10
    return cm


def test_isprs_paper_protocol_excludes_clutter_from_means_only():
    scores = evaluate_confusion(isprs_matrix(), DATASET_INFOS["vaihingen"])
    # class 0: TP 10, FP 10 -> IoU 1/2, F1 2/3; classes 1-4 perfect; clutter IoU 0, F1 0
    assert scores.paper.miou == pytest.approx((0.5 + 4) / 5)
    assert scores.paper.mf1 == pytest.approx((2 / 3 + 4) / 5)
    assert scores.all_classes.miou == pytest.approx((0.5 + 4 + 0) / 6)
    assert scores.all_classes.mf1 == pytest.approx((2 / 3 + 4 + 0) / 6)
    assert scores.paper.oa == pytest.approx(50 / 60)  # clutter pixels still count in OA
    summary = scores.summary("val_")
    assert summary["val_miou"] == pytest.approx(0.9)
    assert summary["val_miou_all"] == pytest.approx(0.75)
    assert summary["val_iou/clutter"] == 0.0
    assert "clutter" in scores.protocol


def test_loveda_means_cover_all_seven_classes():
    cm = np.diag([5, 5, 5, 5, 5, 5, 0]).astype(np.int64)
    cm[6, 0] = 5
    scores = evaluate_confusion(cm, DATASET_INFOS["loveda"])
    assert scores.paper.miou == pytest.approx((0.5 + 5 + 0) / 7)
    assert scores.paper.miou == scores.all_classes.miou


def test_tracker_accumulates_logits_and_ignores_255():
    tracker = MetricTracker(DATASET_INFOS["potsdam"])
    target = torch.tensor([[[0, 1], [5, 255]]])
    logits = torch.zeros(1, 6, 2, 2)
    logits[0, 0, 0, 0] = 1  # 0 -> 0
    logits[0, 1, 0, 1] = 1  # 1 -> 1
    logits[0, 0, 1, 0] = 1  # clutter -> 0
    logits[0, 3, 1, 1] = 1  # ignored
    tracker.update(logits, target)
    tracker.update(np.array([[[1]]]), np.array([[[1]]]))
    expected = np.zeros((6, 6), np.int64)
    expected[0, 0] = 1
    expected[1, 1] = 2
    expected[5, 0] = 1
    np.testing.assert_array_equal(tracker.confusion, expected)
    scores = tracker.compute()
    assert scores.paper.oa == pytest.approx(3 / 4)
    assert math.isnan(scores.paper.iou[2])  # absent everywhere
    tracker.reset()
    assert tracker.confusion.sum() == 0


def test_report_is_strict_json_friendly():
    report = evaluate_confusion(isprs_matrix(), DATASET_INFOS["potsdam"]).to_dict()
    assert report["paper"]["eval_classes"] == ["impervious_surface", "building", "low_vegetation", "tree", "car"]
    assert report["all_classes"]["per_class"]["clutter"]["precision"] is None  # 0/0 -> None, not NaN
    assert report["paper"]["miou"] == pytest.approx(0.9)
