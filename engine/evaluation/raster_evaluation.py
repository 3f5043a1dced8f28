"""Score a prediction class raster against a reference raster: the one entry behind the plugin and the CLI."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from ..model_card import read_card
from ..progress import ProgressReporter
from .category_names import read_category_names
from .metrics import SegmentationMetrics
from .raster_pair import accumulate_confusion, used_class_count

__all__ = ["ClassNameSource", "EvaluationResult", "evaluate_rasters"]

logger = logging.getLogger(__name__)

#: Where the class names of a result came from.
ClassNameSource = Literal["model", "categories", "indices"]


@dataclass(frozen=True)
class EvaluationResult:
    """The scores of one prediction/reference pair and what they were computed from.

    Attributes:
        metrics: Confusion matrix and scores over the named classes (rows = reference, columns = prediction).
        prediction_path: The scored class raster.
        reference_path: The reference raster.
        ignore_index: Reference value that was not scored, or None.
        class_name_source: ``"model"`` (the model card), ``"categories"`` (the prediction's category names) or
            ``"indices"`` (class numbers, when neither names the classes).
    """

    metrics: SegmentationMetrics
    prediction_path: Path
    reference_path: Path
    ignore_index: int | None
    class_name_source: ClassNameSource


def evaluate_rasters(
    prediction: Path,
    reference: Path,
    *,
    ignore_index: int | None = None,
    model_path: Path | None = None,
    progress: ProgressReporter | None = None,
) -> EvaluationResult:
    """Confusion matrix, per-class IoU/F1/precision/recall, mIoU, mF1, OA and kappa of two class rasters.

    Both rasters are read block by block (memory stays bounded). A pixel is scored when the prediction holds a
    class index that is not its nodata (255 never is a class) and the reference is neither nodata nor
    ``ignore_index``. Class names come from the model card of ``model_path``, else from the prediction's
    category names, else they are the class numbers 0..N-1 up to the largest class that occurs.

    Args:
        prediction: Predicted class raster (band 1), e.g. the output of ``segment_raster``.
        reference: Reference class raster on the same grid (band 1).
        ignore_index: Reference value that is not scored (e.g. 0 for "no label"); None = none.
        model_path: Optional model file whose card names the classes.
        progress: Progress and cancellation; nothing is reported if None.

    Raises:
        InvalidRasterError: If a raster is missing or unreadable, or the two are not on one grid.
        InvalidInputError: If the rasters hold a class that the known class names do not cover, or (without
            class names) no pixel could be scored.
        ModelLoadError: If ``model_path`` is not a readable model.
        CanceledError: If ``progress`` reports a cancellation.
    """
    prediction, reference = Path(prediction), Path(reference)
    names, source = _known_class_names(prediction, model_path)
    matrix = accumulate_confusion(prediction, reference, ignore_index, progress)
    used = used_class_count(matrix)
    if names is None:
        if used == 0:
            raise InvalidInputError(
                f"No pixel of '{prediction.name}' could be scored against '{reference.name}': every pixel is "
                "nodata in one of them or ignored; check their nodata values and the value to ignore."
            )
        names, source = tuple(str(i) for i in range(used)), "indices"
    elif len(names) < used:
        raise InvalidInputError(
            f"The rasters hold class {used - 1}, but only {len(names)} class names are known; pick the right MODEL."
        )
    metrics = _scores(matrix, names)
    logger.info("Scored %d pixels of %s against %s.", metrics.pixel_count, prediction.name, reference.name)
    return EvaluationResult(metrics, prediction, reference, ignore_index, source)


def _known_class_names(prediction: Path, model_path: Path | None) -> tuple[tuple[str, ...] | None, ClassNameSource]:
    if model_path is not None:
        return tuple(read_card(model_path).class_names), "model"
    return read_category_names(prediction), "categories"


def _scores(matrix: NDArray[np.int64], names: tuple[str, ...]) -> SegmentationMetrics:
    k = len(names)
    return SegmentationMetrics.from_confusion(matrix[:k, :k], names)
