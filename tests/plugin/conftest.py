"""Real QGIS 3.22 session for the plugin tests: app, Processing, our provider, a tiny model and tiny rasters.

The model is a 1x1 convolution whose logits are ten times the scaled input bands, so the expected class of a pixel
is simply the index of its brightest band: tests compute expectations from the raster, not from the plugin.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import QgsApplication

REPO = Path(__file__).resolve().parents[2]
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"
CLASS_NAMES = ("water", "vegetation", "built")
CLASS_COLORS = ("#1e88e5", "#43a047", "#e53935")
CRS = "EPSG:32640"
PIXEL_M = 0.5
ORIGIN = (500_000.0, 2_800_000.0)
NODATA_IN = 0


@pytest.fixture(scope="session")
def qgis_app() -> Iterator[QgsApplication]:
    """One headless QgsApplication with Processing initialised and the bicorseg provider registered."""
    app = QgsApplication.instance() or QgsApplication([], False)
    app.initQgis()
    if QGIS_PLUGINS not in sys.path:
        sys.path.append(QGIS_PLUGINS)
    from processing.core.Processing import Processing

    Processing.initialize()
    from bicorseg_qgis.provider import BiCoRSegProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("bicorseg") is None:
        provider = BiCoRSegProvider()
        registry.addProvider(provider)
    yield app


@pytest.fixture(scope="session")
def provider(qgis_app: QgsApplication):
    return QgsApplication.processingRegistry().providerById("bicorseg")


def _card(**changes):
    from engine.model_card import ModelCard

    fields = {
        "name": "tiny-test-model",
        "architecture": "external",
        "class_names": CLASS_NAMES,
        "class_colors": CLASS_COLORS,
        "input_bands": ("red", "green", "blue"),
        "norm_mean": (0.0, 0.0, 0.0),
        "norm_std": (1.0, 1.0, 1.0),
        "tile_size_px": 32,
        "overlap_px": 8,
        "size_divisor_px": 1,
    }
    fields.update(changes)
    return ModelCard(**fields)


def export_tiny_onnx(path: Path, card=None, with_card: bool = True) -> Path:
    """A 1x1 conv (logits = 10 * scaled bands) exported to ONNX with the card in its metadata."""
    import onnx
    import torch

    from engine.model_card import embed_card

    conv = torch.nn.Conv2d(3, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(10.0 * torch.eye(3).reshape(3, 3, 1, 1))
        conv.bias.zero_()
    conv.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, still works
        torch.onnx.export(
            conv,
            (torch.zeros(1, 3, 8, 8),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    if with_card:
        embed_card(proto, card or _card())
    else:
        del proto.metadata_props[:]
    onnx.save(proto, str(path))
    return path


#: The HBIS test model's two "HBIS layers" average its logits over these pixel blocks.
HBIS_POOLS = (4, 2)


def export_tiny_hbis_onnx(path: Path) -> Path:
    """The tiny 1x1 conv with BiCoR-Seg-like heatmap outputs: heatmap_i = average of the logits over HBIS_POOLS[i]."""
    import torch

    from engine.export import export_onnx
    from engine.models.outputs import SegmentationOutput

    class PooledHeatmaps(torch.nn.Module):
        in_channels, size_divisor_px = 3, 4

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, kernel_size=1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(10.0 * torch.eye(3).reshape(3, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> SegmentationOutput:
            logits = self.conv(x)
            heat = tuple(torch.nn.functional.avg_pool2d(logits, p) for p in HBIS_POOLS)
            return SegmentationOutput(logits=logits, heatmaps=heat)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(PooledHeatmaps().eval(), _card(size_divisor_px=4), path, heatmaps=True)


@pytest.fixture(scope="session")
def hbis_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_hbis_onnx(tmp_path_factory.mktemp("hbis_model") / "hbis.onnx")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="session")
def model_without_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("nocard") / "nocard.onnx", with_card=False)


def class_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocky class map (8-pixel blocks) of classes 0..2."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 3, size=(-(-height // 8), -(-width // 8)))
    return np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:height, :width]


def write_rgb(path: Path, classes: np.ndarray, nodata_rows: int = 0, seed: int = 1, all_nodata: bool = False) -> Path:
    """3-band UInt8 GeoTIFF whose brightest band at each pixel is that pixel's class; nodata 0 in the top rows."""
    rng = np.random.default_rng(seed)
    height, width = classes.shape
    data = rng.integers(20, 90, size=(3, height, width)).astype(np.uint8)
    for band in range(3):
        bright = rng.integers(160, 250, size=(height, width)).astype(np.uint8)
        data[band] = np.where(classes == band, bright, data[band])
    if nodata_rows:
        data[:, :nodata_rows, :] = NODATA_IN
    if all_nodata:
        data[:] = NODATA_IN
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8", "crs": CRS,
        "transform": from_origin(*ORIGIN, PIXEL_M, PIXEL_M), "nodata": NODATA_IN,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def rgb_raster(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 40 x 56 input (not a multiple of the tile size) with 4 nodata rows, and its expected class map."""
    classes = class_map(40, 56)
    path = write_rgb(tmp_path / "input.tif", classes, nodata_rows=4)
    expected = classes.copy()
    expected[:4, :] = 255
    return path, expected


@pytest.fixture
def run_alg(qgis_app: QgsApplication):
    """processing.run with a fresh context and feedback; returns the result dict."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    def _run(algorithm: str, parameters: dict, feedback=None, context=None):
        if context is None:
            context = QgsProcessingContext()
            context.setProject(QgsProject.instance())
        return processing.run(algorithm, parameters, feedback=feedback or QgsProcessingFeedback(), context=context)

    return _run
