"""Sliding-window prediction of whole images with a torch model, through the engine's tiling and stitching.

Validation during training, ``training.evaluate`` and the engine's raster pipeline all cut images with
:func:`engine.tiling.iter_tile_rows` and blend tile probabilities with :class:`engine.stitching.StripAccumulator`,
so a validation score measures exactly what a QGIS user gets (same windows, same boundless padding, same
blending), just on an in-memory image instead of a raster file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from rasterio.windows import Window
from torch import Tensor, nn

from engine.errors import InvalidInputError
from engine.evaluation.metrics import confusion_matrix
from engine.stitching import StripAccumulator
from engine.tiling import TilingSpec, iter_tile_rows

__all__ = [
    "TTA_MODES",
    "ImageScores",
    "ModelBackend",
    "TtaMode",
    "confusion_over_images",
    "predict_image",
    "read_window",
    "score_images",
]

TtaMode = Literal["none", "flip", "d4"]
TTA_MODES: tuple[str, ...] = ("none", "flip", "d4")

_Transform = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


def _tta_transforms(mode: str) -> list[_Transform]:
    """(forward, inverse) pairs over the last two axes for a TTA mode."""

    def identity(t: Tensor) -> Tensor:
        return t

    def hflip(t: Tensor) -> Tensor:
        return t.flip(-1)

    def vflip(t: Tensor) -> Tensor:
        return t.flip(-2)

    if mode == "none":
        return [(identity, identity)]
    if mode == "flip":
        return [(identity, identity), (hflip, hflip), (vflip, vflip)]
    if mode == "d4":
        pairs: list[_Transform] = []
        for k in range(4):
            for flip in (False, True):
                pairs.append(_dihedral(k, flip))
        return pairs
    raise InvalidInputError(f"Unknown TTA mode '{mode}'; choose one of: {', '.join(TTA_MODES)}.")


def _dihedral(k: int, flip: bool) -> _Transform:
    """Rotate by k quarter turns after an optional horizontal flip, and the exact inverse."""

    def forward(t: Tensor) -> Tensor:
        t = t.flip(-1) if flip else t
        return torch.rot90(t, k, dims=(-2, -1))

    def inverse(t: Tensor) -> Tensor:
        t = torch.rot90(t, -k, dims=(-2, -1))
        return t.flip(-1) if flip else t

    return forward, inverse


class ModelBackend:
    """An in-process inference backend around a torch model (the engine's ``InferenceBackend`` protocol).

    ``predict`` takes normalised tiles and returns class probabilities, averaged over the TTA views
    (mean of the softmax outputs, mapped back to the original orientation).

    Args:
        model: A segmentation model returning ``SegmentationOutput`` (or a bare logits tensor).
        device: Device the model lives on.
        tta: ``"none"``, ``"flip"`` (identity, h-flip, v-flip) or ``"d4"`` (the 8 dihedral views; square tiles).
        amp: Use float16 autocast on CUDA.
        channels_last: Feed tiles in channels-last memory order (for a model kept in that order).
    """

    name = "torch"

    def __init__(
        self, model: nn.Module, device: torch.device, tta: str = "none", amp: bool = False, channels_last: bool = False
    ) -> None:
        self.model = model
        self.device = str(device.type)
        self.device_reason = "the training process's device"
        self._device = device
        self._transforms = _tta_transforms(tta)
        self._amp = amp and device.type == "cuda"
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @torch.no_grad()
    def predict_tensor(self, batch: Tensor) -> Tensor:
        """(B, C, H, W) normalised tiles on any device -> (B, K, H, W) float32 probabilities on the model device."""
        batch = batch.to(self._device, non_blocking=True).contiguous(memory_format=self._memory_format)
        total: Tensor | None = None
        for forward, inverse in self._transforms:
            with torch.autocast(device_type=self._device.type, dtype=torch.float16, enabled=self._amp):
                out = self.model(forward(batch))
            logits = out if isinstance(out, Tensor) else out.logits
            probs = inverse(torch.softmax(logits.float(), dim=1))
            total = probs if total is None else total + probs
        assert total is not None  # there is always at least the identity view
        return total / len(self._transforms)

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """(B, C, H, W) normalised tiles -> (B, K, H, W) class probabilities (the engine backend contract)."""
        probs = self.predict_tensor(torch.from_numpy(np.ascontiguousarray(batch)))
        return probs.cpu().numpy().astype(np.float32, copy=False)


def read_window(image: Tensor, window: Window) -> tuple[Tensor, Tensor]:
    """Boundless read of a window from a (C, H, W) image, like the engine's raster reader.

    Returns:
        ``(tile, valid)``: (C, h, w) with zeros outside the image (zero is the mean after normalisation) and an
        (h, w) boolean mask that is False there; ``h, w`` are the window's size.
    """
    channels, height, width = image.shape
    row_off, col_off = int(window.row_off), int(window.col_off)
    rows, cols = int(window.height), int(window.width)
    tile = image.new_zeros((channels, rows, cols))
    valid = torch.zeros((rows, cols), dtype=torch.bool)
    r1, c1 = min(row_off + rows, height), min(col_off + cols, width)
    if r1 > row_off and c1 > col_off:
        tile[:, : r1 - row_off, : c1 - col_off] = image[:, row_off:r1, col_off:c1]
        valid[: r1 - row_off, : c1 - col_off] = True
    return tile, valid


def _batches(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for start in range(0, len(windows), size):
        yield windows[start : start + size]


def predict_image(
    backend: ModelBackend,
    image: Tensor,
    num_classes: int,
    spec: TilingSpec,
    stitching: str = "gaussian",
    batch_size: int = 4,
) -> NDArray[np.float32]:
    """Class probabilities for a whole (C, H, W) image by overlapping tiles blended with an engine strategy.

    Args:
        backend: The model wrapped as a backend.
        image: (C, H, W) normalised image of any size (tiles past its edges are padded and masked).
        num_classes: Number of classes K.
        spec: Tile size and overlap (the tile size must suit the model's ``size_divisor_px``).
        stitching: A name from ``engine.stitching.STITCHING_STRATEGIES``.
        batch_size: Tiles per forward pass.

    Returns:
        (K, H, W) float32 probabilities.
    """
    _, height, width = image.shape
    out = np.zeros((num_classes, height, width), dtype=np.float32)

    def sink(row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        out[:, row_off : row_off + probs.shape[1]] = probs

    accumulator = StripAccumulator(num_classes, height, width, spec, stitching)
    for row in iter_tile_rows(height, width, spec):
        for group in _batches(row, batch_size):
            tiles, masks = zip(*(read_window(image, w) for w in group), strict=True)
            probs = backend.predict_tensor(torch.stack(tiles)).cpu().numpy()
            for window, tile_probs, valid in zip(group, probs, masks, strict=True):
                accumulator.add(window, tile_probs, valid.numpy())
        accumulator.finish_tile_row(sink)
    return out


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
    backend: ModelBackend,
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
        backend: The model wrapped as a backend.
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
        probs = predict_image(backend, sample["image"], num_classes, spec, stitching, batch_size)
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


def confusion_over_images(
    backend: ModelBackend,
    samples: Iterable[Mapping[str, Tensor]],
    num_classes: int,
    ignore_index: int,
    spec: TilingSpec,
    stitching: str = "gaussian",
    batch_size: int = 4,
    on_image: Callable[[int, NDArray[np.int64]], None] | None = None,
) -> NDArray[np.int64]:
    """Sum of the confusion matrices of whole images (see :func:`score_images`)."""
    return score_images(backend, samples, num_classes, ignore_index, spec, stitching, batch_size, on_image).confusion
