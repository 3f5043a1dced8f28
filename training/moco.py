"""MoCo v2 pieces: image windows from a folder, the two augmented views, the momentum-contrast model.

MoCo v2 (He et al. 2020; Chen et al. 2020): two augmented views of each image go through a query encoder and a
momentum (key) encoder whose weights trail the query encoder's. The InfoNCE loss asks each query to pick its own key
among the current keys and a queue of older keys. The encoder here is a segmentation model's feature extractor
(``forward_features``), global-average pooled over every feature level, followed by a 2-layer MLP head.
Used by ``python -m training.pretrain``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from engine.errors import InvalidInputError

__all__ = ["MoCo", "PretrainImages", "backbone_state_dict", "find_images", "two_views"]


# --- Data: any folder of images, two augmented views per image ------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def find_images(root: Path) -> list[Path]:
    """Every image under ``root`` (recursively), sorted.

    Raises:
        InvalidInputError: If there is none.
    """
    paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise InvalidInputError(f"No images (.png, .jpg, .tif) under '{root}'; pass a folder of images.")
    return paths


class PretrainImages(Dataset[Tensor]):
    """Random windows of the images under a folder (searched recursively), as float (C, H, W) in [0, 1].

    Args:
        root: Folder of images (PNG, JPEG, GeoTIFF; 8-bit values are scaled by 1/255).
        window_px: Edge of the random window cut from each image (smaller images are resized up first).
        bands: Number of leading bands kept (the model's ``in_channels``).
        windows_per_image: Windows drawn from each image per epoch.
    """

    def __init__(self, root: Path, window_px: int = 256, bands: int = 3, windows_per_image: int = 1) -> None:
        self.paths = find_images(root)
        self.window_px = window_px
        self.bands = bands
        self.windows_per_image = windows_per_image

    def __len__(self) -> int:
        """Windows per epoch."""
        return len(self.paths) * self.windows_per_image

    def __getitem__(self, index: int) -> Tensor:
        """A random window of image ``index // windows_per_image``."""
        from training.datasets.base import read_image  # the dataset readers (rasterio + Pillow)

        array = read_image(self.paths[index // self.windows_per_image])
        if array.shape[0] < self.bands:
            raise InvalidInputError(f"'{self.paths[index]}' has {array.shape[0]} bands; the model needs {self.bands}.")
        scale = 255.0 if array.dtype == np.uint8 else float(max(array.max(), 1))
        image = torch.from_numpy(array[: self.bands].astype(np.float32) / scale)
        height, width = image.shape[-2:]
        if min(height, width) < self.window_px:
            factor = self.window_px / min(height, width)
            size = (max(self.window_px, round(height * factor)), max(self.window_px, round(width * factor)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            height, width = size
        top = int(torch.randint(0, height - self.window_px + 1, (1,)))
        left = int(torch.randint(0, width - self.window_px + 1, (1,)))
        return image[:, top : top + self.window_px, left : left + self.window_px].contiguous()


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(2 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    x = image[None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                 groups=channels)  # fmt: skip
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                 groups=channels)  # fmt: skip
    return x[0]


def _augment(image: Tensor, size_px: int, generator: torch.Generator) -> Tensor:
    """One MoCo v2 "aug-plus" view of a (C, H, W) image in [0, 1] (hue jitter left out)."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    _, height, width = image.shape
    # RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3)
    area = height * width * uniform(0.2, 1.0)
    ratio = math.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_h = min(height, max(1, round(math.sqrt(area / ratio))))
    crop_w = min(width, max(1, round(math.sqrt(area * ratio))))
    top = int(uniform(0, height - crop_h + 1))
    left = int(uniform(0, width - crop_w + 1))
    view = image[:, top : top + crop_h, left : left + crop_w]
    view = F.interpolate(view[None], size=(size_px, size_px), mode="bilinear", align_corners=False)[0]
    if uniform(0, 1) < 0.8:  # colour jitter 0.4 brightness / contrast / saturation
        view = view * uniform(0.6, 1.4)
        mean = view.mean()
        view = (view - mean) * uniform(0.6, 1.4) + mean
        grey = view.mean(dim=0, keepdim=True)
        view = (view - grey) * uniform(0.6, 1.4) + grey
    if uniform(0, 1) < 0.2:
        view = view.mean(dim=0, keepdim=True).expand_as(view)
    if uniform(0, 1) < 0.5:
        view = _gaussian_blur(view, uniform(0.1, 2.0))
    if uniform(0, 1) < 0.5:
        view = view.flip(-1)
    return view.clamp(0.0, 1.0)


def two_views(
    batch: Tensor, size_px: int, generator: torch.Generator, mean: Sequence[float], std: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """Two independently augmented, normalised views of every image of a (B, C, H, W) batch in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=batch.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype).view(-1, 1, 1)
    first = torch.stack([(_augment(img, size_px, generator) - mean_t) / std_t for img in batch])
    second = torch.stack([(_augment(img, size_px, generator) - mean_t) / std_t for img in batch])
    return first, second


# --- The MoCo model ---------------------------------------------------------------------------------------------------


def _feature_extractor(model: nn.Module) -> nn.Module:
    """The module whose ``forward_features`` gives the model's multi-level features (BiCoR-Seg: its encoder)."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module) and hasattr(encoder, "forward_features"):
        return encoder
    if hasattr(model, "forward_features"):
        return model
    raise InvalidInputError(f"{type(model).__name__} has no forward_features(); it cannot be pre-trained here.")


def _features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The feature levels of ``model`` for ``x`` (a single tensor becomes a one-element list)."""
    extractor: Any = _feature_extractor(model)
    features = extractor.forward_features(x)
    return list(features) if isinstance(features, list | tuple) else [features]


class _PooledEncoder(nn.Module):
    """Feature extractor -> global average pool of every level -> concatenation -> 2-layer MLP head."""

    def __init__(self, model: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def pooled(self, x: Tensor) -> Tensor:
        return torch.cat([f.mean(dim=(-2, -1)) for f in _features(self.model, x)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.pooled(x)), dim=1)


class MoCo(nn.Module):
    """MoCo v2: query encoder, momentum key encoder, a queue of negative keys and the InfoNCE loss.

    Args:
        model: The segmentation model whose feature extractor is pre-trained (trained in place).
        sample_size_px: Input edge used to measure the pooled feature width.
        dim: Embedding width of the MLP head (128 in MoCo v2).
        queue_size: Number of negative keys kept (65536 in the paper; smaller suits small datasets).
        momentum: Key-encoder momentum m.
        temperature: InfoNCE temperature (0.2 in MoCo v2).
    """

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, model: nn.Module, sample_size_px: int = 64, dim: int = 128, queue_size: int = 4096,
                 momentum: float = 0.999, temperature: float = 0.2) -> None:  # fmt: skip
        super().__init__()
        channels = int(getattr(model, "in_channels", 3))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probe = _PooledEncoder(model, 1, 1, 1).pooled(torch.zeros(1, channels, sample_size_px, sample_size_px))
        model.train(was_training)
        feature_dim = int(probe.shape[1])
        self.encoder_q = _PooledEncoder(model, feature_dim, max(feature_dim, dim), dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param in self.encoder_k.parameters():
            param.requires_grad_(False)
        self.momentum = momentum
        self.temperature = temperature
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q_param, k_param in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            k_param.mul_(self.momentum).add_(q_param.detach(), alpha=1.0 - self.momentum)
        for q_buf, k_buf in zip(self.encoder_q.buffers(), self.encoder_k.buffers(), strict=True):
            k_buf.copy_(q_buf)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        size = self.queue.shape[1]
        ptr = int(self.queue_ptr.item())
        index = (torch.arange(keys.shape[0], device=keys.device) + ptr) % size
        self.queue[:, index] = keys.T
        self.queue_ptr[0] = (ptr + keys.shape[0]) % size

    def forward(self, view_q: Tensor, view_k: Tensor) -> tuple[Tensor, Tensor]:
        """InfoNCE loss of a batch of view pairs, and the share of queries that ranked their own key first."""
        q = self.encoder_q(view_q)
        with torch.no_grad():
            self._momentum_update()
            k = self.encoder_k(view_k)
        positives = (q * k).sum(dim=1, keepdim=True)
        negatives = q @ self.queue.clone().detach()
        logits = torch.cat([positives, negatives], dim=1) / self.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        self._enqueue(k)
        return loss, accuracy


def backbone_state_dict(model: nn.Module, sample_size_px: int = 64) -> dict[str, Tensor]:
    """The entries of ``model.state_dict()`` that its feature extractor uses, under the model's own names.

    Found by back-propagating through ``forward_features`` once: every module with a parameter that receives a
    gradient is part of the backbone (its buffers, e.g. BatchNorm statistics, come along).
    """
    channels = int(getattr(model, "in_channels", 3))
    probe = copy.deepcopy(model).train()
    probe.zero_grad(set_to_none=True)
    levels = _features(probe, torch.randn(2, channels, sample_size_px, sample_size_px))
    torch.stack([f.float().mean() for f in levels]).sum().backward()  # type: ignore[no-untyped-call]
    used = {name.rsplit(".", 1)[0] for name, p in probe.named_parameters() if p.grad is not None}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in used}
