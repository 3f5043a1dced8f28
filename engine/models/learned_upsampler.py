"""A learned x4 upsampler for BiCoR-Seg's pixel embeddings, guided by the image at full resolution.

The paper's upsampler (:class:`~engine.models.bicorseg.PixelShuffleUpsampler`) has no weights: each of the 16
sub-pixel positions of a 1/4-resolution cell is predicted by its own channels. A model trained for an hour on a
CPU leaves those 16 positions inconsistent, which shows as a regular 4-pixel lattice in the class raster and makes
the output change when the image moves by a few pixels; and nothing at full resolution can recover thin roads and
single villas that the 1/4 grid blurs. This upsampler replaces it in the named CPU variant ``bicorseg_small_lu``
(the paper configurations keep the paper's): bilinear x2 steps, each followed by a 3x3 convolution over the
upsampled features concatenated with features computed from the image itself at that resolution (a two-level
image stem at full and half resolution), so the embedding field is smooth between cells and edges come from the
image. The classifier is unchanged: BiCoR-Seg's class embeddings are dotted with the E/16 output channels.

No batch norm: the ONNX exporter folds it into the convolutions, and the default model must be recoverable from
its ONNX file for fine-tuning (:mod:`engine.models.from_onnx`). Convolutions with bias and GELU are enough for a
three-layer decoder.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GuidedUpsampler"]


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GELU())


class GuidedUpsampler(nn.Module):
    """(B, E, H/4, W/4) features + (B, C, H, W) image -> (B, E/16, H, W) pixel embeddings.

    Args:
        channels: E, the embedding width (divisible by 16).
        in_channels: Image bands C.
        full_px_channels: Width of the full-resolution image features (and of the output's last hidden layer).
        half_px_channels: Width of the half-resolution image features and hidden layer.
    """

    def __init__(self, channels: int, in_channels: int, full_px_channels: int = 8, half_px_channels: int = 16) -> None:
        super().__init__()
        self.stem_full = _conv(in_channels, full_px_channels)
        self.stem_half = _conv(full_px_channels, half_px_channels, stride=2)
        self.reduce = nn.Conv2d(channels, half_px_channels, kernel_size=1)
        self.fuse_half = _conv(2 * half_px_channels, half_px_channels)
        self.fuse_full = _conv(half_px_channels + full_px_channels, full_px_channels)
        self.project = nn.Conv2d(full_px_channels, channels // 16, kernel_size=1)

    def image_features(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The image's features at full and half resolution; computed once per forward, shared by both heads."""
        full = self.stem_full(image)
        return full, self.stem_half(full)

    def forward(self, x: Tensor, guide: tuple[Tensor, Tensor]) -> Tensor:
        """Upsample ``x`` by 4 with the image features ``guide`` from :meth:`image_features`."""
        full, half = guide
        # Sizes come from the guide, so tracing records them as shapes of the input, not constants.
        y = F.interpolate(self.reduce(x), size=half.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse_half(torch.cat([y, half], dim=1))
        y = F.interpolate(y, size=full.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse_full(torch.cat([y, full], dim=1))
        return cast(Tensor, self.project(y))
