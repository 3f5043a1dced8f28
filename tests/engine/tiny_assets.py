"""Tiny generated assets shared by the engine tests (importable; the fixtures using them are in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.model_card import ModelCard

TINY_CLASSES = ("water", "trees", "buildings")
TINY_COLOURS = ("#0000ff", "#00a000", "#ff0000")
UTM40N = "EPSG:32640"
ORIGIN = (500000.0, 2800000.0)


def make_tiny_card(**changes: Any) -> ModelCard:
    """A valid 3-class RGB card for the tiny net; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "name": "tiny test model",
        "architecture": "tiny_conv",
        "class_names": TINY_CLASSES,
        "class_colors": TINY_COLOURS,
        "architecture_args": {"in_channels": 3},
        "tile_size_px": 32,
        "overlap_px": 8,
        "size_divisor_px": 1,
    }
    fields.update(changes)
    return ModelCard(**fields)


MakeGeoTiff = Callable[..., Path]


@dataclass(frozen=True)
class TinyModelFiles:
    """The tiny model in both formats; see the module docstring."""

    onnx_path: Path
    checkpoint_path: Path
    card: ModelCard
    module: Any  # torch.nn.Module (torch is imported lazily so raster tests never need it)


def build_tiny_conv_net(num_classes: int, in_channels: int = 3, hidden: int = 8) -> Any:
    """The tiny net: 3x3 conv -> ReLU -> 1x1 conv, returning SegmentationOutput; any input size works."""
    import torch
    from torch import nn

    from engine.models.outputs import SegmentationOutput

    class TinyConvNet(nn.Module):
        size_divisor_px = 1

        def __init__(self) -> None:
            super().__init__()
            self.in_channels = in_channels
            self.features = nn.Conv2d(in_channels, hidden, 3, padding=1)
            self.head = nn.Conv2d(hidden, num_classes, 1)

        def forward(self, x: torch.Tensor) -> SegmentationOutput:
            return SegmentationOutput(logits=self.head(torch.relu(self.features(x))))

    return TinyConvNet()
