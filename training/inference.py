"""Whole-image prediction with a torch model, through the engine's own tile loop, blending and TTA.

Validation during training, ``training.evaluate`` and the engine's raster pipeline all run
:func:`engine.inference.pipeline.stitch_raster` (here on an in-memory image, see
:mod:`engine.inference.in_memory`) with the engine's :func:`~engine.inference.tta.make_predictor` around the
engine's :class:`~engine.backends.torch_backend.TorchBackend`, so a validation score measures exactly what a QGIS
user gets (same windows, same boundless padding, same blending, same test-time augmentation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from engine.backends.torch_backend import TorchBackend
from engine.evaluation.metrics import confusion_matrix
from engine.inference.in_memory import stitch_array
from engine.inference.tiling import TilingSpec
from engine.inference.tta import TTA_MODES, Predictor, TtaMode, make_predictor
from training.datasets.base import DatasetInfo

__all__ = [
    "TTA_MODES",
    "ImageScores",
    "ModuleShapes",
    "TtaMode",
    "module_predictor",
    "predict_image",
    "score_images",
    "shapes_of",
]


@dataclass(frozen=True)
class ModuleShapes:
    """Band and class counts of a model in training, as the engine's backend checks them (no card yet).

    Attributes:
        num_bands: Input channels.
        num_classes: Output classes.
        input_bands: Band names, for messages.
        output_activation: The models of ``engine.models`` return logits.
    """

    num_bands: int
    num_classes: int
    input_bands: tuple[str, ...] = ()
    output_activation: str = "logits"


def shapes_of(info: DatasetInfo) -> ModuleShapes:
    """The tensor shapes a model trained on a dataset takes and returns."""
    return ModuleShapes(len(info.band_names), info.num_classes, tuple(info.band_names))


def module_predictor(
    model: nn.Module,
    shapes: ModuleShapes,
    device: torch.device,
    tta: str = "none",
    amp: bool = False,
    channels_last: bool = False,
) -> Predictor:
    """The engine's checked predictor (with test-time augmentation) around a model already on ``device``.

    Raises:
        engine.errors.InvalidInputError: If ``tta`` is not one of :data:`TTA_MODES`.
    """
    backend = TorchBackend.from_module(model, shapes, device, amp=amp, channels_last=channels_last)
    return make_predictor(backend, shapes.num_classes, tta)


def predict_image(
    predict: Predictor,
    image: Tensor | NDArray[np.float32],
    num_classes: int,
    spec: TilingSpec,
    stitching: str = "gaussian",
    batch_size: int = 4,
) -> NDArray[np.float32]:
    """Class probabilities (K, H, W) for a whole normalised (C, H, W) image, tiled and blended as in the engine."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    return stitch_array(array.astype(np.float32, copy=False), predict, spec, num_classes, stitching, batch_size)


@dataclass(frozen=True)
class ImageScores:
    """What whole-image prediction of labelled images yields.

    Attributes:
        confusion: (K, K) int64 counts, rows = reference, columns = prediction.
        nll_sum: Sum over scored pixels of -log p(reference class) of the stitched probabilities.
        pixel_count: Number of scored (non-ignored) pixels.
    """

    confusion: NDArray[np.int64]
    nll_sum: float
    pixel_count: int

    @property
    def mean_nll(self) -> float:
        """Validation loss: mean cross-entropy of the stitched probabilities (NaN without scored pixels)."""
        return self.nll_sum / self.pixel_count if self.pixel_count else float("nan")


#: Probability floor for the validation cross-entropy, so a confidently wrong pixel costs at most -log(1e-7).
_MIN_PROB = 1e-7


def score_images(
    predict: Predictor,
    samples: Iterable[Mapping[str, Tensor]],
    num_classes: int,
    ignore_index: int,
    spec: TilingSpec,
    stitching: str = "gaussian",
    batch_size: int = 4,
    on_image: Callable[[int, NDArray[np.int64]], None] | None = None,
) -> ImageScores:
    """Confusion matrix and cross-entropy of whole images predicted by :func:`predict_image`.

    Args:
        predict: The engine predictor around the model (:func:`module_predictor`).
        samples: Dataset samples ``{"image": (C, H, W), "mask": (H, W)}`` of any size.
        num_classes: Number of classes K.
        ignore_index: Mask value that is not scored.
        spec: Tile size and overlap.
        stitching: Stitching strategy name.
        batch_size: Tiles per forward pass.
        on_image: Called with ``(index, predicted labels (H, W))`` after each image (progress, writing PNGs).
    """
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    nll_sum, pixel_count = 0.0, 0
    for index, sample in enumerate(samples):
        probs = predict_image(predict, sample["image"], num_classes, spec, stitching, batch_size)
        labels = probs.argmax(axis=0)
        reference = sample["mask"].numpy()
        total += confusion_matrix(labels, reference, num_classes, ignore_index)
        scored = (reference != ignore_index) & (reference >= 0) & (reference < num_classes)
        picked = np.take_along_axis(probs, np.where(scored, reference, 0)[None].astype(np.int64), axis=0)[0]
        nll_sum += float(-np.log(np.maximum(picked[scored], _MIN_PROB)).sum())
        pixel_count += int(scored.sum())
        if on_image is not None:
            on_image(index, labels.astype(np.int64))
    return ImageScores(total, nll_sum, pixel_count)
