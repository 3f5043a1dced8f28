"""Joint image + mask augmentations, normalisation and the tensor conversion, in numpy and torch.

A *sample* is ``{"image": (C, H, W) array, "mask": (H, W) int64 array}``. Geometric transforms move image and
mask together; everything that has to invent pixels (padding, mosaic seams) fills the mask with the ignore index,
never with a class. Randomness always comes from an explicit ``numpy.random.Generator`` so that data-loader
workers and tests are reproducible.

The recipe (GeoSeg/BiCoR family, see ``training-spec.md`` section 4): random scale, "smart" random crop,
flips/rot90, 25 % mosaic, and ImageNet normalisation (plus optional colour jitter); Hi-ResNet adds CutMix, here with the label pasted together
with the image (the reference code pasted the image box only, which mislabels pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from engine.errors import InvalidInputError
from engine.model_card import NODATA_CLASS, ModelCard

#: Mask value of pixels that carry no class (boundary, no-data, padding): the same value the engine writes where
#: there is no class, so a class raster read back as labels needs no remapping.
IGNORE_INDEX = NODATA_CLASS


class Sample(TypedDict):
    """One training example in numpy form."""

    image: NDArray[Any]
    mask: NDArray[np.int64]


class SampleTransform(Protocol):
    """A joint augmentation: draws what it needs from ``rng`` and returns a new sample."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Transform one sample."""
        ...


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: tuple[SampleTransform, ...]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Run every transform on the sample."""
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def _contiguous(image: NDArray[Any], mask: NDArray[np.int64]) -> Sample:
    return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask)}


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Flip the last axis of image and mask."""
        if rng.random() >= self.p:
            return sample
        return _contiguous(sample["image"][..., ::-1], sample["mask"][..., ::-1])


@dataclass(frozen=True)
class VerticalFlip:
    """Mirror top-bottom with probability ``p``."""

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Flip the row axis of image and mask."""
        if rng.random() >= self.p:
            return sample
        return _contiguous(sample["image"][..., ::-1, :], sample["mask"][::-1, :])


@dataclass(frozen=True)
class RandomRotate90:
    """With probability ``p``, rotate by 90, 180 or 270 degrees (equally likely)."""

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Rotate image and mask by the same multiple of 90 degrees."""
        if rng.random() >= self.p:
            return sample
        k = int(rng.integers(1, 4))
        return _contiguous(np.rot90(sample["image"], k, axes=(-2, -1)), np.rot90(sample["mask"], k, axes=(0, 1)))


@dataclass(frozen=True)
class ColourJitter:
    """Photometric jitter: random brightness, contrast, saturation and per-band gain, mask untouched.

    Tiles of one city differ in sun, haze and sensor white balance far more than in geometry; a model trained on
    a few tiles without this learns their colours and misreads the next tile (the first Dubai default model lost
    most roads and buildings to "land" on the held-out tile). Factors are drawn uniformly in
    ``[1 - strength, 1 + strength]`` (per-band gain in a quarter of that range), applied in random order on
    values scaled to [0, 1] by ``value_range`` and clipped back into it.

    Attributes:
        strength: Jitter amplitude in [0, 1); 0 disables the transform.
        p: Probability of jittering a sample.
        value_range: Raw values mapped to 0 and 1 (8-bit imagery: 0 and 255).
    """

    strength: float = 0.2
    p: float = 0.8
    value_range: tuple[float, float] = (0.0, 255.0)

    def __post_init__(self) -> None:
        if not 0 <= self.strength < 1:
            raise InvalidInputError(f"Colour jitter strength {self.strength} must be in [0, 1); 0.2 is typical.")
        if self.value_range[1] <= self.value_range[0]:
            raise InvalidInputError(f"Colour jitter value range {self.value_range} must be increasing, e.g. (0, 255).")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Jitter the image of ``sample``; its dtype and the mask are kept."""
        if self.strength == 0 or rng.random() >= self.p:
            return sample
        image = sample["image"]
        low, high = self.value_range
        values = (image.astype(np.float32) - low) / (high - low)
        amplitude = self.strength
        for step in rng.permutation(4):
            factor = np.float32(rng.uniform(1 - amplitude, 1 + amplitude))
            if step == 0:  # brightness
                values = values * factor
            elif step == 1:  # contrast around the image mean
                mean = values.mean()
                values = (values - mean) * factor + mean
            elif step == 2 and values.shape[0] >= 3:  # saturation around the grey of the first three bands
                grey = values[:3].mean(axis=0, keepdims=True)
                values = np.concatenate([(values[:3] - grey) * factor + grey, values[3:]], axis=0)
            elif step == 3:  # white balance: one gain per band
                gains = rng.uniform(1 - amplitude / 4, 1 + amplitude / 4, size=(values.shape[0], 1, 1))
                values = values * gains.astype(np.float32)
        values = np.clip(values, 0.0, 1.0) * (high - low) + low
        if np.issubdtype(image.dtype, np.integer):
            values = np.rint(values)
        return {"image": np.ascontiguousarray(values.astype(image.dtype)), "mask": sample["mask"]}


def resize_sample(sample: Sample, height: int, width: int) -> Sample:
    """Resize to (height, width): bilinear for the image (float32 out), nearest for the mask.

    Bilinear rather than the recipe's bicubic because bicubic overshoots the value range at edges; antialiasing is
    on so that downscaling does not alias.
    """
    image = torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32))[None]
    downscaling = height < image.shape[-2] or width < image.shape[-1]
    resized = F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False, antialias=downscaling)
    mask = sample["mask"]
    # nearest neighbour by pixel centres, exact in numpy (no float rounding in torch's nearest mode)
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64), mask.shape[1] - 1)
    return _contiguous(resized[0].numpy(), mask[rows[:, None], cols[None, :]])


@dataclass(frozen=True)
class RandomScale:
    """Rescale by a factor drawn from ``scales`` (a list) or uniformly from ``scale_range`` when given."""

    scales: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5)
    scale_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        """Reject empty or non-positive factors."""
        factors = self.scale_range if self.scale_range is not None else self.scales
        if not factors or min(factors) <= 0:
            raise InvalidInputError(f"Scale factors must be positive and non-empty, got {factors}.")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Resize image and mask by the drawn factor."""
        if self.scale_range is not None:
            factor = float(rng.uniform(*self.scale_range))
        else:
            factor = float(self.scales[int(rng.integers(len(self.scales)))])
        if factor == 1.0:
            return sample
        height, width = sample["mask"].shape
        return resize_sample(sample, max(1, round(height * factor)), max(1, round(width * factor)))


def pad_sample(sample: Sample, height: int, width: int, ignore_index: int = IGNORE_INDEX) -> Sample:
    """Pad bottom/right up to at least (height, width): image with 0, mask with the ignore index."""
    h, w = sample["mask"].shape
    pad_h, pad_w = max(0, height - h), max(0, width - w)
    if pad_h == 0 and pad_w == 0:
        return sample
    image = np.pad(sample["image"], ((0, 0), (0, pad_h), (0, pad_w)))
    mask = np.pad(sample["mask"], ((0, pad_h), (0, pad_w)), constant_values=ignore_index)
    return _contiguous(image, mask)


def crop_sample(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Cut the window rows ``top:top+height``, columns ``left:left+width`` (must lie inside the sample)."""
    return _contiguous(
        sample["image"][:, top : top + height, left : left + width],
        sample["mask"][top : top + height, left : left + width],
    )


def _crop_is_informative(mask: NDArray[np.int64], ignore_index: int, max_ratio: float) -> bool:
    """True when at least two classes are present and none covers max_ratio or more of the labelled pixels."""
    labelled = mask[mask != ignore_index]
    if labelled.size == 0:
        return False
    counts = np.bincount(labelled.reshape(-1))
    counts = counts[counts > 0]
    return counts.size > 1 and counts.max() / counts.sum() < max_ratio


@dataclass(frozen=True)
class SmartCrop:
    """Random crop of ``size_px`` that avoids crops dominated by one class.

    The image is first padded (mask with the ignore index) if it is smaller than the crop. Then up to
    ``max_tries`` crops are drawn; the first one with at least two labelled classes and no class at or above
    ``max_ratio`` of the labelled pixels wins, otherwise the last one drawn is kept.
    """

    size_px: int = 512
    ignore_index: int = IGNORE_INDEX
    max_ratio: float = 0.75
    max_tries: int = 10

    def __post_init__(self) -> None:
        """Reject sizes and counts that cannot work."""
        if self.size_px < 1 or self.max_tries < 1:
            raise InvalidInputError(f"SmartCrop needs size_px >= 1 and max_tries >= 1, got {self}.")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Pad if needed, then draw crops until one is informative."""
        sample = pad_sample(sample, self.size_px, self.size_px, self.ignore_index)
        height, width = sample["mask"].shape
        crop = sample
        for _ in range(self.max_tries):
            top = int(rng.integers(0, height - self.size_px + 1))
            left = int(rng.integers(0, width - self.size_px + 1))
            crop = crop_sample(sample, top, left, self.size_px, self.size_px)
            if _crop_is_informative(crop["mask"], self.ignore_index, self.max_ratio):
                break
        return crop


@dataclass(frozen=True)
class PadToMultiple:
    """Pad bottom/right so both sides are multiples of ``divisor_px`` (for evaluating whole images)."""

    divisor_px: int = 32
    ignore_index: int = IGNORE_INDEX

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Pad with 0 / ignore; deterministic (``rng`` unused)."""
        height, width = sample["mask"].shape
        d = self.divisor_px
        return pad_sample(sample, -(-height // d) * d, -(-width // d) * d, self.ignore_index)


def _random_window(sample: Sample, height: int, width: int, rng: np.random.Generator, ignore_index: int) -> Sample:
    sample = pad_sample(sample, height, width, ignore_index)
    h, w = sample["mask"].shape
    top = int(rng.integers(0, h - height + 1))
    left = int(rng.integers(0, w - width + 1))
    return crop_sample(sample, top, left, height, width)


def mosaic(samples: Sequence[Sample], rng: np.random.Generator, ignore_index: int = IGNORE_INDEX) -> Sample:
    """Four-image mosaic on a canvas the size of the first sample.

    A random centre splits the canvas into four quadrants (the centre stays in the middle half so no quadrant
    vanishes); each quadrant is a random window of one sample, padded with the ignore index if that sample is
    too small.

    Args:
        samples: Exactly four samples with the same number of bands.
        rng: Random generator.
        ignore_index: Mask value for padding.
    """
    if len(samples) != 4:
        raise InvalidInputError(f"mosaic needs exactly 4 samples, got {len(samples)}.")
    height, width = samples[0]["mask"].shape
    cy = int(rng.integers(height // 4, height - height // 4 + 1))
    cx = int(rng.integers(width // 4, width - width // 4 + 1))
    boxes = ((0, 0, cy, cx), (0, cx, cy, width - cx), (cy, 0, height - cy, cx), (cy, cx, height - cy, width - cx))
    image = np.zeros((samples[0]["image"].shape[0], height, width), dtype=np.float32)
    mask = np.full((height, width), ignore_index, dtype=np.int64)
    for part, (top, left, h, w) in zip(samples, boxes, strict=True):
        if h == 0 or w == 0:
            continue
        window = _random_window(part, h, w, rng, ignore_index)
        image[:, top : top + h, left : left + w] = window["image"]
        mask[top : top + h, left : left + w] = window["mask"]
    return {"image": image, "mask": mask}


def _cut_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Box (top, left, bottom, right) covering about 1 - lam of the area, centred at a random pixel."""
    cut = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, left, bottom, right


def cutmix_pair(first: Sample, second: Sample, rng: np.random.Generator, alpha: float = 1.0) -> Sample:
    """Paste a random box of ``second`` (image AND mask) into ``first``; both must have the same size.

    The box area fraction is 1 - lam with lam ~ Beta(alpha, alpha).
    """
    if first["mask"].shape != second["mask"].shape:
        raise InvalidInputError(
            f"cutmix_pair needs equal sizes, got {first['mask'].shape} and {second['mask'].shape}; crop first."
        )
    height, width = first["mask"].shape
    top, left, bottom, right = _cut_box(height, width, float(rng.beta(alpha, alpha)), rng)
    image = np.array(first["image"], dtype=np.result_type(first["image"], second["image"]))
    mask = first["mask"].copy()
    image[:, top:bottom, left:right] = second["image"][:, top:bottom, left:right]
    mask[top:bottom, left:right] = second["mask"][top:bottom, left:right]
    return {"image": image, "mask": mask}


def cutmix_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    rng: np.random.Generator,
    p: float = 0.5,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation-correct CutMix on a batch: with probability ``p``, paste one box from the rolled batch.

    Image i receives the box of image (i - 1) mod B together with that image's labels, so the loss needs no
    lam-weighting. The inputs are not modified.

    Args:
        images: (B, C, H, W) images.
        masks: (B, H, W) class indices.
        rng: Random generator.
        p: Probability of mixing this batch.
        alpha: Beta distribution parameter of the kept area fraction.

    Returns:
        The (possibly) mixed images and masks.
    """
    if images.shape[0] < 2 or rng.random() >= p:
        return images, masks
    height, width = masks.shape[-2:]
    top, left, bottom, right = _cut_box(int(height), int(width), float(rng.beta(alpha, alpha)), rng)
    mixed_images, mixed_masks = images.clone(), masks.clone()
    mixed_images[..., top:bottom, left:right] = images.roll(1, dims=0)[..., top:bottom, left:right]
    mixed_masks[..., top:bottom, left:right] = masks.roll(1, dims=0)[..., top:bottom, left:right]
    return mixed_images, mixed_masks


@dataclass(frozen=True)
class Normalization:
    """Scale raw values to [0, 1] by ``value_range``, then standardise per band: (x - mean) / std.

    Defaults are the ImageNet statistics on 8-bit input, which every anchor recipe uses.
    """

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    value_range: tuple[float, float] = (0.0, 255.0)

    def __post_init__(self) -> None:
        """Check the statistics line up."""
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise InvalidInputError(f"Normalization needs one positive std per mean, got {self.mean}, {self.std}.")
        if self.value_range[1] <= self.value_range[0]:
            raise InvalidInputError(f"value_range must be (low, high) with low < high, got {self.value_range}.")

    @classmethod
    def from_card(cls, card: ModelCard) -> Normalization:
        """The normalisation a model card prescribes (the same the engine applies at inference)."""
        return cls(mean=card.norm_mean, std=card.norm_std, value_range=card.input_value_range)

    def __call__(self, image: NDArray[Any]) -> NDArray[np.float32]:
        """Normalise a (C, H, W) image; C must equal the number of bands in ``mean``."""
        if image.shape[0] != len(self.mean):
            raise InvalidInputError(
                f"Image has {image.shape[0]} bands but the normalisation has {len(self.mean)}; "
                "select the model's bands or fix norm_mean/norm_std."
            )
        low, high = self.value_range
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        scaled = (image.astype(np.float32) - np.float32(low)) / np.float32(high - low)
        normalised: NDArray[np.float32] = ((scaled - mean) / std).astype(np.float32, copy=False)
        return normalised


def to_tensors(sample: Sample, normalization: Normalization) -> dict[str, torch.Tensor]:
    """Normalise the image and return ``{"image": float32 (C, H, W), "mask": int64 (H, W)}`` tensors."""
    image = torch.from_numpy(np.ascontiguousarray(normalization(sample["image"])))
    mask = torch.from_numpy(np.ascontiguousarray(sample["mask"], dtype=np.int64))
    return {"image": image, "mask": mask}


def build_train_transforms(
    crop_size_px: int = 512,
    scales: Sequence[float] = (0.75, 1.0, 1.25, 1.5),
    scale_range: tuple[float, float] | None = None,
    flip_p: float = 0.5,
    rot90_p: float = 0.5,
    max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
    colour_jitter: float = 0.0,
    value_range: tuple[float, float] = (0.0, 255.0),
) -> Compose:
    """The recipe's training augmentation: random scale, smart crop, h/v flips, rot90, optional colour jitter.

    Colour jitter (``colour_jitter`` > 0, see :class:`ColourJitter`) runs last, on the crop, where it is cheapest.

    Mosaic needs four samples and is applied by the dataset (``mosaic_p``); CutMix acts on batches
    (:func:`cutmix_batch`).
    """
    return Compose(
        (
            RandomScale(tuple(scales), scale_range),
            SmartCrop(crop_size_px, ignore_index, max_ratio),
            HorizontalFlip(flip_p),
            VerticalFlip(flip_p),
            RandomRotate90(rot90_p),
            ColourJitter(colour_jitter, value_range=value_range),
        )
    )
