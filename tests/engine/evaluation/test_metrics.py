"""Confusion matrix and scores, checked against matrices and values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInputError
from engine.evaluation.metrics import ConfusionMatrixAccumulator, SegmentationMetrics, confusion_matrix

NAMES3 = ("a", "b", "c")
# rows = reference, columns = prediction
CM3 = np.array([[5, 1, 0], [2, 3, 1], [0, 1, 7]], dtype=np.int64)


def test_confusion_matrix_counts_target_prediction_pairs():
    target = np.array([[0, 0, 1], [2, 2, 1]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    cm = confusion_matrix(pred, target, num_classes=3)
    expected = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_confusion_matrix_drops_ignore_and_out_of_range_targets():
    target = np.array([0, 1, 255, 7, -1, 2])
    pred = np.array([0, 1, 2, 0, 1, 1])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=255)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = 1
    expected[1, 1] = 1
    expected[2, 1] = 1
    np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_ignore_index_inside_class_range_is_dropped():
    # GeoSeg's LoveDA convention: ignore = 1 here would drop class-1 targets.
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), num_classes=2, ignore_index=1)
    np.testing.assert_array_equal(cm, [[1, 1], [0, 0]])


def test_confusion_matrix_rejects_prediction_outside_classes_unless_masked():
    target = np.array([0, 1])
    pred = np.array([0, 255])
    with pytest.raises(InvalidInputError, match="not a class index"):
        confusion_matrix(pred, target, num_classes=2)
    cm = confusion_matrix(pred, target, num_classes=2, valid=pred != 255)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 0]])


def test_confusion_matrix_rejects_shape_mismatch():
    with pytest.raises(InvalidInputError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), num_classes=2)


def test_accumulator_sums_blocks_like_one_big_matrix():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(8, 8))
    pred = rng.integers(0, 3, size=(8, 8))
    acc = ConfusionMatrixAccumulator(num_classes=3, ignore_index=3)
    acc.update(pred[:4], target[:4])
    acc.update(pred[4:], target[4:])
    np.testing.assert_array_equal(acc.matrix, confusion_matrix(pred, target, 3, 3))
    acc.reset()
    assert acc.matrix.sum() == 0


def test_accumulator_counts_batches_and_drops_the_ignore_index():
    # (B, H, W) batches of different sizes, 255 = unlabelled; counted by hand.
    acc = ConfusionMatrixAccumulator(num_classes=6, ignore_index=255)
    acc.update(np.array([[[0, 1], [0, 3]]]), np.array([[[0, 1], [5, 255]]]))
    acc.update(np.array([[[1]]]), np.array([[[1]]]))
    expected = np.zeros((6, 6), np.int64)
    expected[0, 0] = 1
    expected[1, 1] = 2
    expected[5, 0] = 1
    np.testing.assert_array_equal(acc.matrix, expected)
    scores = SegmentationMetrics.from_confusion(acc.matrix, [str(i) for i in range(6)])
    assert scores.oa == pytest.approx(3 / 4)
    assert math.isnan(scores.iou[2])  # absent everywhere


def test_scores_match_hand_computed_values():
    m = SegmentationMetrics.from_confusion(CM3, NAMES3)
    # column sums (predicted) 7, 5, 8; row sums (reference) 6, 6, 8; total 20
    assert m.iou == pytest.approx((5 / 8, 3 / 8, 7 / 9))
    assert m.f1 == pytest.approx((10 / 13, 6 / 11, 14 / 16))
    assert m.precision == pytest.approx((5 / 7, 3 / 5, 7 / 8))
    assert m.recall == pytest.approx((5 / 6, 3 / 6, 7 / 8))
    assert m.miou == pytest.approx(16 / 27)
    assert m.mf1 == pytest.approx((10 / 13 + 6 / 11 + 0.875) / 3)
    assert m.oa == pytest.approx(0.75)
    # chance agreement (7*6 + 5*6 + 8*8) / 400 = 0.34
    assert m.kappa == pytest.approx((0.75 - 0.34) / 0.66)
    assert m.support_px == (6, 6, 8)
    assert m.pixel_count == 20


def test_eval_classes_restrict_means_but_not_oa():
    m = SegmentationMetrics.from_confusion(CM3, NAMES3, eval_classes=[0, 2])
    assert m.miou == pytest.approx((5 / 8 + 7 / 9) / 2)
    assert m.mf1 == pytest.approx((10 / 13 + 0.875) / 2)
    assert m.oa == pytest.approx(0.75)


def test_absent_class_is_nan_and_skipped_by_means():
    cm = np.array([[4, 0, 0], [0, 0, 0], [1, 0, 3]])
    m = SegmentationMetrics.from_confusion(cm, NAMES3)
    assert math.isnan(m.iou[1]) and math.isnan(m.f1[1])
    assert m.iou[0] == pytest.approx(4 / 5)
    assert m.iou[2] == pytest.approx(3 / 4)
    assert m.miou == pytest.approx((0.8 + 0.75) / 2)
    # class 0 never missed: recall 1; class 2 never over-predicted: precision 1
    assert m.recall[0] == pytest.approx(1.0)
    assert m.precision[2] == pytest.approx(1.0)


def test_class_in_reference_but_never_predicted_scores_zero_not_nan():
    cm = np.array([[3, 0], [2, 0]])
    m = SegmentationMetrics.from_confusion(cm, ("x", "y"))
    assert m.iou[1] == 0.0 and m.f1[1] == 0.0
    assert math.isnan(m.precision[1])
    assert m.kappa == pytest.approx(0.0)  # always predicting one class agrees only by chance


def test_empty_matrix_gives_nan_without_warnings():
    with np.errstate(all="raise"):
        m = SegmentationMetrics.from_confusion(np.zeros((2, 2), dtype=np.int64), ("x", "y"))
    assert math.isnan(m.miou) and math.isnan(m.oa) and math.isnan(m.kappa)


def test_perfect_single_class_agreement_has_undefined_kappa():
    m = SegmentationMetrics.from_confusion(np.array([[9, 0], [0, 0]]), ("x", "y"))
    assert m.oa == 1.0 and m.miou == 1.0
    assert math.isnan(m.kappa)


def test_from_confusion_rejects_bad_inputs():
    with pytest.raises(InvalidInputError, match="does not fit"):
        SegmentationMetrics.from_confusion(CM3, ("a", "b"))
    with pytest.raises(InvalidInputError, match="eval_classes"):
        SegmentationMetrics.from_confusion(CM3, NAMES3, eval_classes=[3])
    with pytest.raises(InvalidInputError, match="negative"):
        SegmentationMetrics.from_confusion(-CM3, NAMES3)


def test_to_dict_names_classes():
    d = SegmentationMetrics.from_confusion(CM3, NAMES3, eval_classes=[0, 1]).to_dict()
    assert d["eval_classes"] == ["a", "b"]
    assert d["per_class"]["c"]["support_px"] == 8
    assert d["confusion_matrix"][2] == [0, 1, 7]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_perfect_prediction_scores_one(pairs):
    target = np.array([t for t, _ in pairs])
    m = SegmentationMetrics.from_confusion(confusion_matrix(target, target, 4), ("a", "b", "c", "d"))
    assert m.oa == 1.0
    assert m.miou == 1.0 and m.mf1 == 1.0
    assert m.confusion.sum() == len(pairs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=60))
def test_oa_equals_fraction_of_matching_pixels(pairs):
    target = np.array([t for t, _ in pairs])
    pred = np.array([p for _, p in pairs])
    m = SegmentationMetrics.from_confusion(confusion_matrix(pred, target, 3), NAMES3)
    assert m.oa == pytest.approx(float(np.mean(pred == target)))
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in m.iou)
