"""Synthetic inputs for the engine benchmarks: striped-written rasters and models exported to a temp dir."""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from engine.model_card import ModelCard, embed_card

CLASSES = ("building", "land", "road", "vegetation", "water", "unlabeled")
COLOURS = ("#3c1098", "#8429f6", "#6ec1e4", "#fedd3a", "#e2a929", "#9b9b9b")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_synthetic_raster(path: Path, size_px: int, strip_rows: int = 512, seed: int = 0) -> Path:
    """Write a ``size_px`` square 3-band uint8 GeoTIFF (tiled 256, DEFLATE) strip by strip, in bounded memory.

    The content is a smooth pattern plus noise (something a model and a compressor can chew on).
    """
    rng = np.random.default_rng(seed)
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": size_px, "width": size_px, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32640", "transform": from_origin(500000.0, 2800000.0, 0.5, 0.5),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    x = np.arange(size_px, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        for row in range(0, size_px, strip_rows):
            rows = min(strip_rows, size_px - row)
            y = np.arange(row, row + rows, dtype=np.float32)[:, None]
            strip = np.empty((3, rows, size_px), dtype=np.uint8)
            for band, (fx, fy) in enumerate(((37.0, 53.0), (91.0, 29.0), (61.0, 71.0))):
                pattern = 110 + 60 * np.sin(x / fx) + 60 * np.cos(y / fy)
                noise = rng.integers(0, 24, size=(rows, size_px), dtype=np.uint8)
                strip[band] = np.clip(pattern, 0, 231).astype(np.uint8) + noise
            dataset.write(strip, window=Window(0, row, size_px, rows))
    return path


def benchmark_card(architecture: str, tile_px: int, overlap_px: int, divisor_px: int) -> ModelCard:
    """A card for a benchmark model (random weights)."""
    return ModelCard(
        name=f"benchmark {architecture}", architecture=architecture, class_names=CLASSES, class_colors=COLOURS,
        tile_size_px=tile_px, overlap_px=overlap_px, size_divisor_px=divisor_px,
        description="Random weights, for speed and memory benchmarks only.",
    )  # fmt: skip


def export_registry_model(name: str, folder: Path, tile_px: int, overlap_px: int) -> tuple[Path, Path, ModelCard]:
    """Build ``engine.models.create_model(name)`` and save it as ONNX (engine.export) and as a torch checkpoint."""
    import torch

    from engine.export import export_onnx
    from engine.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES)).eval()
    card = benchmark_card(name, tile_px, overlap_px, int(getattr(model, "size_divisor_px", 32)))
    onnx_path = export_onnx(model, card, folder / f"{name}.onnx")
    checkpoint = folder / f"{name}.pt"
    torch.save({"state_dict": model.state_dict(), "model_card": card.to_json()}, checkpoint)
    return onnx_path, checkpoint, card


def export_pointwise_model(folder: Path, tile_px: int, overlap_px: int) -> tuple[Path, ModelCard]:
    """A 1x1 convolution (3 -> 6 classes) as ONNX: the cheapest model, so I/O and stitching dominate."""
    import onnx
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, len(CLASSES), kernel_size=1).eval()
    card = benchmark_card("external", tile_px, overlap_px, 1)
    path = folder / "pointwise.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            conv, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": axes, "logits": axes}, opset_version=17, dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(path))
    embed_card(proto, card)
    onnx.save(proto, str(path))
    return path, card


#: Widths of the probe U-Net: 0.58 M parameters and 13.3 GFLOP per 512 px tile, like the issue's Deepness probe.
PROBE_UNET_WIDTHS = (13, 26, 52, 72, 104)


def export_probe_unet(folder: Path, tile_px: int, overlap_px: int) -> tuple[Path, ModelCard, dict[str, float]]:
    """A Deepness-style probe U-Net (random weights, softmax output, fixed input, 0.5 m card) as ONNX.

    Returns:
        The ONNX path, its card and ``{"parameters": ..., "gflop_per_tile": ...}`` (multiply-adds count 2 FLOP).
    """
    import torch

    from benchmarks.shift_unet import export_softmax_model
    from engine.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(len(CLASSES), widths=PROBE_UNET_WIDTHS).eval()
    card = benchmark_card("external", tile_px, overlap_px, tile_px).replace(
        name="benchmark probe U-Net", gsd_m=0.5, output_activation="probabilities"
    )
    path = export_softmax_model(net, card, folder / "probe_unet.onnx")
    return path, card, {"parameters": float(sum(p.numel() for p in net.parameters())),
                        "gflop_per_tile": conv_gflop(net, len(card.input_bands), tile_px)}  # fmt: skip


def conv_gflop(net: Any, bands: int, tile_px: int) -> float:
    """FLOP (2 per multiply-add) of the convolutions of ``net`` on one (1, bands, tile, tile) input, in GFLOP."""
    import torch
    from torch import nn

    macs = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.ConvTranspose2d):
            macs[0] += inputs[0].numel() * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            macs[0] += output.numel() * module.in_channels * kernel // module.groups

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        net(torch.zeros(1, bands, tile_px, tile_px))
    for handle in handles:
        handle.remove()
    return 2.0 * macs[0] / 1e9


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime
    import torch

    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def save_results(name: str, results: dict[str, Any], out: Path | None = None) -> Path:
    """Print the results as JSON and save them to ``benchmarks/results/<name>.json`` (or ``out``)."""
    path = out if out is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    path.write_text(text + "\n")
    print(text)
    return path
