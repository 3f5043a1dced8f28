"""Confusion-matrix segmentation metrics: per-class IoU/F1, mIoU, mF1, OA and Cohen's kappa (pure numpy).

Rows of a confusion matrix are the reference (target) class, columns the predicted class. Pixels whose target is
the ignore index, or outside ``[0, num_classes)``, are dropped before counting, which is how every ignore/no-data
convention (255, 6, 7...) works with one code path. The matrix is additive: the matrix of a whole raster is the sum
of the matrices of its blocks, so callers accumulate with ``cm += confusion_matrix(...)``.

A class that is neither in the reference nor predicted has an undefined IoU/F1 (NaN), and the means skip NaNs,
like the GeoSeg evaluator the papers used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import InvalidInputError

__all__ = ["ConfusionMatrixAccumulator", "SegmentationMetrics", "confusion_matrix"]


def confusion_matrix(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    ignore_index: int | None = None,
    valid: ArrayLike | None = None,
) -> NDArray[np.int64]:
    """Count (target, prediction) pairs over all pixels that have a reference class.

    Args:
        pred: Predicted class indices, any shape.
        target: Reference class indices, same shape as ``pred``.
        num_classes: Number of classes K.
        ignore_index: Target value that is not scored (e.g. 255). Targets outside ``[0, K)`` are dropped anyway.
        valid: Optional boolean mask of the same shape; False pixels are dropped (e.g. nodata in the prediction).

    Returns:
        (K, K) int64 matrix; entry ``[t, p]`` counts pixels of reference class t predicted as p.

    Raises:
        InvalidInputError: If the shapes differ, K < 1, or a scored pixel has a prediction outside ``[0, K)``.
    """
    if num_classes < 1:
        raise InvalidInputError(f"num_classes must be at least 1, got {num_classes}; pass the model's class count.")
    pred_arr = np.asarray(pred)
    target_arr = np.asarray(target)
    if pred_arr.shape != target_arr.shape:
        raise InvalidInputError(
            f"Prediction shape {pred_arr.shape} differs from reference shape {target_arr.shape}; "
            "resample one onto the other's grid first."
        )
    pred_flat = pred_arr.reshape(-1).astype(np.int64, copy=False)
    target_flat = target_arr.reshape(-1).astype(np.int64, copy=False)
    keep = (target_flat >= 0) & (target_flat < num_classes)
    if ignore_index is not None:
        keep &= target_flat != ignore_index
    if valid is not None:
        valid_arr = np.asarray(valid, dtype=bool)
        if valid_arr.shape != pred_arr.shape:
            raise InvalidInputError(f"Valid mask shape {valid_arr.shape} differs from prediction {pred_arr.shape}.")
        keep &= valid_arr.reshape(-1)
    pred_kept = pred_flat[keep]
    target_kept = target_flat[keep]
    if pred_kept.size and (pred_kept.min() < 0 or pred_kept.max() >= num_classes):
        bad = int(pred_kept[(pred_kept < 0) | (pred_kept >= num_classes)][0])
        raise InvalidInputError(
            f"Prediction value {bad} is not a class index in [0, {num_classes}); mask nodata pixels with "
            "`valid=` or check that the prediction and the class list match."
        )
    counts = np.bincount(target_kept * num_classes + pred_kept, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


class ConfusionMatrixAccumulator:
    """Running sum of confusion matrices over many tiles, batches or images."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        """Start from an all-zero (K, K) matrix.

        Args:
            num_classes: Number of classes K.
            ignore_index: Target value that is not scored.
        """
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: NDArray[np.int64] = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike, valid: ArrayLike | None = None) -> None:
        """Add the pixels of one more prediction/reference pair."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index, valid)

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.matrix[...] = 0


def _safe_ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """Divide elementwise, NaN where the denominator is 0 (without warnings)."""
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: NDArray[np.float64]) -> float:
    """Mean of the finite values; NaN (without a RuntimeWarning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class SegmentationMetrics:
    """Scores derived from one confusion matrix.

    Attributes:
        class_names: Class names in index order.
        iou: Per-class intersection over union TP / (TP + FP + FN); NaN for a class absent from both.
        f1: Per-class F1 = 2PR / (P + R) = 2TP / (2TP + FP + FN); NaN for a class absent from both.
        precision: Per-class TP / (TP + FP); NaN for a class never predicted.
        recall: Per-class TP / (TP + FN); NaN for a class absent from the reference.
        support_px: Reference pixel count per class.
        eval_classes: Class indices the means average over (all classes unless a protocol excludes some).
        miou: NaN-skipping mean IoU over ``eval_classes``.
        mf1: NaN-skipping mean F1 over ``eval_classes``.
        oa: Overall accuracy trace / total over all classes; NaN when nothing was scored.
        kappa: Cohen's kappa (OA - chance agreement) / (1 - chance agreement); NaN when undefined.
        pixel_count: Number of scored pixels.
        confusion: The (K, K) matrix the scores came from (rows = reference, columns = prediction).
    """

    class_names: tuple[str, ...]
    iou: tuple[float, ...]
    f1: tuple[float, ...]
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    support_px: tuple[int, ...]
    eval_classes: tuple[int, ...]
    miou: float
    mf1: float
    oa: float
    kappa: float
    pixel_count: int
    confusion: NDArray[np.int64] = field(repr=False, compare=False)

    @classmethod
    def from_confusion(
        cls,
        cm: ArrayLike,
        class_names: Sequence[str],
        eval_classes: Sequence[int] | None = None,
    ) -> SegmentationMetrics:
        """Compute every score from a confusion matrix.

        Args:
            cm: (K, K) counts, rows = reference class, columns = predicted class.
            class_names: K class names.
            eval_classes: Indices averaged by ``miou``/``mf1`` (e.g. ISPRS leaves out clutter); default all.
                OA and kappa always use every class.

        Raises:
            InvalidInputError: If the matrix is not square, has negative counts, or does not match the names.
        """
        matrix = np.asarray(cm)
        k = len(class_names)
        if matrix.ndim != 2 or matrix.shape != (k, k):
            raise InvalidInputError(
                f"Confusion matrix shape {matrix.shape} does not fit {k} class names; pass a ({k}, {k}) matrix."
            )
        if np.any(matrix < 0):
            raise InvalidInputError("Confusion matrix has negative counts; build it with confusion_matrix().")
        chosen = tuple(range(k)) if eval_classes is None else tuple(int(c) for c in eval_classes)
        if not chosen or any(c < 0 or c >= k for c in chosen):
            raise InvalidInputError(f"eval_classes {chosen} must be a non-empty list of indices in [0, {k}).")
        counts = matrix.astype(np.float64)
        tp = np.diag(counts)
        predicted = counts.sum(axis=0)
        actual = counts.sum(axis=1)
        total = float(counts.sum())
        iou = _safe_ratio(tp, predicted + actual - tp)
        f1 = _safe_ratio(2.0 * tp, predicted + actual)
        oa = float(tp.sum() / total) if total > 0 else math.nan
        chance = float((predicted * actual).sum() / (total * total)) if total > 0 else math.nan
        kappa = (oa - chance) / (1.0 - chance) if total > 0 and chance < 1.0 else math.nan
        index = np.array(chosen, dtype=np.int64)
        return cls(
            class_names=tuple(class_names),
            iou=tuple(float(v) for v in iou),
            f1=tuple(float(v) for v in f1),
            precision=tuple(float(v) for v in _safe_ratio(tp, predicted)),
            recall=tuple(float(v) for v in _safe_ratio(tp, actual)),
            support_px=tuple(int(v) for v in matrix.sum(axis=1)),
            eval_classes=chosen,
            miou=_nanmean(iou[index]),
            mf1=_nanmean(f1[index]),
            oa=oa,
            kappa=kappa,
            pixel_count=int(matrix.sum()),
            confusion=matrix.astype(np.int64, copy=True),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the means, OA, kappa, and per-class scores keyed by class name.

        NaN stays NaN (``json.dumps`` writes it as ``NaN``; callers that need strict JSON convert it to None).
        """
        per_class = {
            name: {
                "iou": self.iou[i],
                "f1": self.f1[i],
                "precision": self.precision[i],
                "recall": self.recall[i],
                "support_px": self.support_px[i],
            }
            for i, name in enumerate(self.class_names)
        }
        return {
            "miou": self.miou,
            "mf1": self.mf1,
            "oa": self.oa,
            "kappa": self.kappa,
            "pixel_count": self.pixel_count,
            "eval_classes": [self.class_names[i] for i in self.eval_classes],
            "per_class": per_class,
            "confusion_matrix": self.confusion.tolist(),
        }
