"""A plain U-Net: the reference recipe the default model is measured against, not a paper model.

The default-model issues set their targets against "a plain 1.1 M-parameter U-Net trained from scratch on this
2-core CPU". This is that network, registered as ``unet`` so the trainer (``python -m training.train``, the path
fine-tuning shares) trains it under the same data, schedule and time budget as the paper families, and the fold
comparison (``python -m training.folds``) is one path for both. Its loss is the reference recipe's
label-smoothed cross-entropy (:class:`training.losses.ReferenceLoss`).

Topology: per level a double 3x3 convolution (batch norm, ReLU), max-pool down; transposed 2x2 convolution up,
concatenation with the skip, double convolution; a 1x1 full-resolution head. Widths 12-24-48-96-192 give
1.09 M parameters at 5 classes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel, check_known_options
from .outputs import SegmentationOutput

__all__ = ["UNet", "unet"]

_WIDTHS = (12, 24, 48, 96, 192)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNet(SegmentationModel):
    """Plain U-Net returning :class:`SegmentationOutput` (``logits`` only).

    Args:
        num_classes: Output classes K.
        in_channels: Input bands.
        widths: Channels per level, finest first; the input must be a multiple of 2 ** (levels - 1).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = _WIDTHS) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.size_divisor_px = 2 ** (len(widths) - 1)
        self.num_classes = num_classes
        self.down = nn.ModuleList(
            _double_conv(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)
        )
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in range(len(widths) - 1))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> SegmentationOutput:
        """(B, C, H, W) -> logits (B, K, H, W)."""
        self.check_input(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return SegmentationOutput(logits=self.head(x))


def unet(num_classes: int, **options: Any) -> UNet:
    """The reference U-Net (1.09 M parameters at 5 classes).

    Args:
        num_classes: K.
        **options: ``in_channels`` and ``widths``.

    Returns:
        The model with random weights.
    """
    check_known_options(options, ("in_channels", "widths"), "U-Net")
    if "widths" in options:
        options["widths"] = tuple(int(w) for w in options["widths"])
    return UNet(num_classes, **options)
