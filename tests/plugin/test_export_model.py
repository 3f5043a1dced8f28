"""bicorseg:exportmodel turns a checkpoint with a card into an ONNX model that Segment land cover can run."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException

from .conftest import CLASS_COLORS, CLASS_NAMES, class_map, write_rgb

pytestmark = pytest.mark.qgis

# The narrowest Hi-ResNet the builder accepts: a real registered architecture, exported in a few seconds.
TINY_HI_RESNET = {
    "stem_channels": 16, "funnel_channels": 16, "funnel_blocks": 1, "branch_channels": (16, 16, 32), "stage_blocks": (1, 1),
    "stage_modules": (1, 1), "coarse_head_channels": 8, "ocr_channels": 8, "ocr_key_channels": 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from engine.model_card import ModelCard
    from engine.models import create_model

    torch.manual_seed(0)
    model = create_model("hi_resnet_small", num_classes=3, **TINY_HI_RESNET)
    card = ModelCard(
        name="tiny hi-resnet", architecture="hi_resnet_small", class_names=CLASS_NAMES, class_colors=CLASS_COLORS,
        architecture_args=TINY_HI_RESNET, size_divisor_px=model.size_divisor_px, tile_size_px=64, overlap_px=16,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"state_dict": model.state_dict(), "model_card": card.to_json()}, path)
    return path


def test_export_writes_onnx_with_the_card_and_it_segments(tmp_path, checkpoint, run_alg):
    import onnx

    from engine.model_card import ONNX_METADATA_KEY, ModelCard

    result = run_alg("bicorseg:exportmodel", {"INPUT": str(checkpoint), "OUTPUT": str(tmp_path / "tiny.onnx")})
    assert result["MODEL_NAME"] == "tiny hi-resnet"
    props = {p.key: p.value for p in onnx.load(result["OUTPUT"]).metadata_props}
    card = ModelCard.from_json(props[ONNX_METADATA_KEY])
    assert card.architecture == "hi_resnet_small" and card.class_names == CLASS_NAMES
    assert "class_names" in props  # Deepness-compatible keys too

    raster = write_rgb(tmp_path / "in.tif", class_map(40, 40))
    segmented = run_alg(
        "bicorseg:segmentlandcover",
        {"INPUT": str(raster), "MODEL": result["OUTPUT"], "OUTPUT": str(tmp_path / "classes.tif")},
    )
    with rasterio.open(segmented["OUTPUT"]) as out:
        classes = out.read(1)
    assert classes.shape == (40, 40)
    assert set(np.unique(classes)) <= {0, 1, 2}


def test_checkpoint_without_card_is_refused_with_the_fix(tmp_path, run_alg):
    import torch

    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(QgsProcessingException, match="model_card"):
        run_alg("bicorseg:exportmodel", {"INPUT": str(bare), "OUTPUT": str(tmp_path / "x.onnx")})
    assert not (tmp_path / "x.onnx").exists()


def test_torch_checkpoint_runs_with_the_torch_backend_like_its_onnx_export(tmp_path, checkpoint, run_alg):
    raster = write_rgb(tmp_path / "in.tif", class_map(40, 40))
    onnx_model = run_alg("bicorseg:exportmodel", {"INPUT": str(checkpoint), "OUTPUT": str(tmp_path / "m.onnx")})
    runs = {}
    for backend, model in (("torch", str(checkpoint)), ("onnxruntime", onnx_model["OUTPUT"])):
        result = run_alg(
            "bicorseg:segmentlandcover",
            {"INPUT": str(raster), "MODEL": model, "BACKEND": backend, "DEVICE": "cpu",
             "OUTPUT": str(tmp_path / f"{backend}.tif")},
        )  # fmt: skip
        assert result["BACKEND_USED"] == backend
        assert result["DEVICE_USED"] == "cpu"
        with rasterio.open(result["OUTPUT"]) as out:
            runs[backend] = out.read(1)
    # Same weights, two runtimes: the argmax may differ only where two classes are within float noise.
    assert (runs["torch"] == runs["onnxruntime"]).mean() > 0.99
