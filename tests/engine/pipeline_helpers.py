"""Tiny models, rasters and fakes shared by the pipeline and command-line tests (built in tmp, never committed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.transform import from_origin
from rasterio.windows import Window

from engine.model_card import ModelCard, embed_card

#: Logit = GAIN x normalised band value: a pointwise ("1x1 conv") model whose class is the brightest band.
GAIN = 4.0

TINY_CARD = ModelCard(
    name="tiny pointwise test model",
    architecture="external",
    class_names=("water", "field", "city"),
    class_colors=("#0000ff", "#00ff00", "#ff0000"),
    input_bands=("red", "green", "blue"),
    norm_mean=(0.5, 0.5, 0.5),
    norm_std=(0.25, 0.25, 0.25),
    tile_size_px=32,
    overlap_px=8,
    size_divisor_px=8,
    description="Identity 1x1 convolution scaled by 4: class = brightest band.",
)


def build_tiny_onnx(path: Path, card: ModelCard = TINY_CARD) -> Path:
    """Export a 1x1 convolution (logits = GAIN x normalised bands) to ONNX with the card in its metadata."""
    import torch

    conv = torch.nn.Conv2d(card.num_bands, card.num_classes, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for k in range(min(card.num_bands, card.num_classes)):
            conv.weight[k, k, 0, 0] = GAIN
    conv.eval()
    _export(conv, path, card)
    return path


def build_conv_onnx(path: Path, card: ModelCard = TINY_CARD, seed: int = 0) -> Path:
    """Two 3x3 convolutions (zero padding, fixed random weights): unlike the pointwise model, a pixel's answer
    depends on its neighbours and, at a tile's edge, on where the tile falls."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(card.num_bands, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, card.num_classes, 3, padding=1),
    ).eval()  # fmt: skip
    _export(net, path, card)
    return path


def _export(module: object, path: Path, card: ModelCard) -> None:
    """A dynamic-size ONNX export of ``module`` with ``card`` embedded."""
    import onnx
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices; it needs no onnxscript
        torch.onnx.export(
            module,
            (torch.zeros(1, card.num_bands, 16, 16),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={
                "input": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    embed_card(proto, card)
    onnx.save(proto, str(path))


def make_image(height: int, width: int, seed: int = 0) -> NDArray[np.uint8]:
    """A (3, H, W) uint8 image whose brightest band (the class) is clear by at least 50 grey levels."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 150, size=(3, height, width), dtype=np.uint8)
    winner = rng.integers(0, 3, size=(height, width))
    bright = rng.integers(200, 256, size=(height, width), dtype=np.uint8)
    np.put_along_axis(image, winner[None], bright[None], axis=0)
    return image


def expected_probs(image: NDArray[np.uint8], card: ModelCard = TINY_CARD) -> NDArray[np.float64]:
    """Softmax of the tiny model's logits, computed directly from the image (the independent reference)."""
    mean = np.asarray(card.norm_mean)[:, None, None]
    std = np.asarray(card.norm_std)[:, None, None]
    logits = GAIN * ((image.astype(np.float64) / 255.0 - mean) / std)
    logits -= logits.max(axis=0, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=0, keepdims=True)


def write_raster(
    path: Path,
    image: NDArray[np.generic],
    nodata: float | None = None,
    georeferenced: bool = True,
) -> Path:
    """Write a (C, H, W) array as a GeoTIFF (EPSG:32640, 0.5 m pixels) or a plain pixel-grid TIFF."""
    count, height, width = image.shape
    profile: dict[str, object] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": image.dtype.name,
    }
    if georeferenced:
        profile.update(crs="EPSG:32640", transform=from_origin(500000.0, 2800000.0, 0.5, 0.5))
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(image)
        if count == 3:
            from rasterio.enums import ColorInterp

            dataset.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return path


class ArraySource:
    """An in-memory stand-in for RasterSource: normalised (C, H, W) array, boundless zero-padded reads."""

    def __init__(self, image: NDArray[np.float32], valid: NDArray[np.bool_] | None = None) -> None:
        self.image = image
        self.height, self.width = image.shape[1:]
        self.valid = np.ones((self.height, self.width), bool) if valid is None else valid
        self.reads: list[Window] = []

    def read_tile(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        self.reads.append(window)
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        tile = np.zeros((self.image.shape[0], h, w), np.float32)
        valid = np.zeros((h, w), bool)
        rows, cols = min(h, self.height - r), min(w, self.width - c)
        tile[:, :rows, :cols] = self.image[:, r : r + rows, c : c + cols]
        valid[:rows, :cols] = self.valid[r : r + rows, c : c + cols]
        return tile, valid


class RecordingWriter:
    """Collects write_rows calls (copies), checking that rows arrive in order and each exactly once."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.next_row = 0
        self.chunks: list[tuple[int, NDArray[np.float32], NDArray[np.bool_]]] = []

    def write_rows(self, row_off: int, probs: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        assert row_off == self.next_row, f"rows out of order: got {row_off}, expected {self.next_row}"
        assert probs.shape[2] == self.width and valid.shape == probs.shape[1:]
        self.next_row += probs.shape[1]
        self.chunks.append((row_off, probs.copy(), valid.copy()))

    def stacked(self) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        return (
            np.concatenate([p for _, p, _ in self.chunks], axis=1),
            np.concatenate([v for _, _, v in self.chunks], axis=0),
        )


class SoftmaxBackend:
    """A fake InferenceBackend: pointwise softmax of GAIN x the normalised input; counts its calls."""

    name = "fake"
    device = "cpu"
    device_reason = "fake backend for tests"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        self.batch_sizes.append(batch.shape[0])
        logits = GAIN * batch.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


#: Centres (in normalised units) of the brightness model's three classes: dark, mid, bright.
BRIGHTNESS_CENTRES = (-1.5, 0.0, 1.5)


def build_brightness_onnx(path: Path, card: ModelCard = TINY_CARD) -> Path:
    """A model whose class is the band mean's nearest centre (dark / mid / bright): absolute values matter.

    Logits are ``-4 (m - c_k)^2`` for the mean ``m`` of the normalised bands, so unlike the pointwise model, a
    raster scaled by the wrong range (a 16-bit image under the card's 0-255) gets other classes.
    """
    import torch

    class Brightness(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centres = torch.tensor(BRIGHTNESS_CENTRES, dtype=x.dtype).view(1, -1, 1, 1)
            return -4.0 * (x.mean(dim=1, keepdim=True) - centres) ** 2

    _export(Brightness().eval(), path, card)
    return path


def expected_brightness_classes(normalised_mean: NDArray[np.float64]) -> NDArray[np.int64]:
    """The brightness model's classes for a (H, W) mean of normalised bands (the independent reference)."""
    centres = np.asarray(BRIGHTNESS_CENTRES)[:, None, None]
    return np.asarray(np.argmin((normalised_mean[None] - centres) ** 2, axis=0))


def build_fixed_size_onnx(path: Path, size_px: int, batch: int = 1, card: ModelCard = TINY_CARD) -> Path:
    """The pointwise model exported with a fixed (batch, bands, size, size) input, as many Deepness models are."""
    import onnx
    import torch

    conv = torch.nn.Conv2d(card.num_bands, card.num_classes, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for k in range(min(card.num_bands, card.num_classes)):
            conv.weight[k, k, 0, 0] = GAIN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            conv.eval(), (torch.zeros(batch, card.num_bands, size_px, size_px),), str(path), input_names=["input"],
            output_names=["logits"], opset_version=17, dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(path))
    embed_card(proto, card)
    onnx.save(proto, str(path))
    return path
