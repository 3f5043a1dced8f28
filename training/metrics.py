"""Dataset scoring protocols on top of :mod:`engine.metrics`: the papers' means and the all-class means.

ISPRS (Potsdam, Vaihingen): the papers average mIoU and mF1 over the first five classes (clutter excluded) but
compute OA over all six; mmsegmentation averages over all six. LoveDA and UAVid average over all classes. Both
numbers are reported, each named for its protocol, because they are not comparable with each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from engine.evaluation.metrics import ConfusionMatrixAccumulator, SegmentationMetrics
from training.datasets.base import DatasetInfo


@dataclass(frozen=True)
class ProtocolScores:
    """Scores of one confusion matrix under a dataset's paper protocol and over all classes.

    Attributes:
        paper: Means over the protocol's ``eval_classes`` (OA and kappa use every class).
        all_classes: Means over every class.
        protocol: One line naming the paper protocol.
    """

    paper: SegmentationMetrics
    all_classes: SegmentationMetrics
    protocol: str

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Flat dict for logs, every key prefixed with ``prefix`` (e.g. ``"val_"``).

        Keys: ``miou``/``mf1`` (paper protocol), ``miou_all``/``mf1_all``, ``oa``, ``kappa``, ``iou/<class>`` and
        ``f1/<class>``.
        """
        out = {
            "miou": self.paper.miou,
            "mf1": self.paper.mf1,
            "miou_all": self.all_classes.miou,
            "mf1_all": self.all_classes.mf1,
            "oa": self.paper.oa,
            "kappa": self.paper.kappa,
        }
        for name, iou, f1 in zip(self.paper.class_names, self.paper.iou, self.paper.f1, strict=True):
            out[f"iou/{name}"] = iou
            out[f"f1/{name}"] = f1
        return {f"{prefix}{key}": value for key, value in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report with both protocols, NaN written as None."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        report: dict[str, Any] = clean(
            {"protocol": self.protocol, "paper": self.paper.to_dict(), "all_classes": self.all_classes.to_dict()}
        )
        return report


def evaluate_confusion(cm: ArrayLike, info: DatasetInfo) -> ProtocolScores:
    """Score a (K, K) confusion matrix (rows = reference) under ``info``'s protocol and over all classes."""
    return ProtocolScores(
        paper=SegmentationMetrics.from_confusion(cm, info.class_names, info.eval_classes),
        all_classes=SegmentationMetrics.from_confusion(cm, info.class_names),
        protocol=info.protocol,
    )


def _as_numpy(values: torch.Tensor | NDArray[Any]) -> NDArray[Any]:
    if isinstance(values, torch.Tensor):
        array: NDArray[Any] = values.detach().cpu().numpy()
        return array
    return np.asarray(values)


class MetricTracker:
    """Accumulates predictions of a whole validation pass and scores them with the dataset protocol."""

    def __init__(self, info: DatasetInfo) -> None:
        """Start empty for the classes and ignore index of ``info``."""
        self.info = info
        self._accumulator = ConfusionMatrixAccumulator(info.num_classes, info.ignore_index)

    @property
    def confusion(self) -> NDArray[np.int64]:
        """The (K, K) matrix counted so far."""
        return self._accumulator.matrix

    def update(self, prediction: torch.Tensor | NDArray[Any], target: torch.Tensor | NDArray[Any]) -> None:
        """Add a batch.

        Args:
            prediction: (B, K, H, W) logits/probabilities (argmax taken over K) or (B, H, W) class indices.
            target: (B, H, W) reference indices with the ignore index where unlabelled.
        """
        pred = _as_numpy(prediction)
        if pred.ndim == 4:
            pred = pred.argmax(axis=1)
        self._accumulator.update(pred, _as_numpy(target))

    def compute(self) -> ProtocolScores:
        """Scores of everything added since the last reset."""
        return evaluate_confusion(self._accumulator.matrix, self.info)

    def reset(self) -> None:
        """Start a new pass."""
        self._accumulator.reset()
