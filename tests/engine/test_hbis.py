"""BiCoR-Seg's HBIS heatmaps: upsampling, normalisation, the backends, the tile loop, the writer and the CLI.

Expected values are computed here from the image and the test model's definition (average pooling of its logits,
then torch's own bilinear resize and a softmax), never by the engine's code.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import rasterio
import torch

from engine.backends.hbis import hbis_probabilities, upsample_bilinear
from engine.backends.onnx_backend import OnnxBackend
from engine.backends.torch_backend import TorchBackend
from engine.cli import EXIT_BAD_INPUT, main
from engine.export import add_hbis_outputs, export_onnx
from engine.inference.pipeline import stitch_raster
from engine.inference.tiling import TilingSpec
from engine.inference.tta import make_predictor
from engine.model_card import ModelCard
from engine.model_file import ModelFile
from engine.models import create_model
from engine.models.base import SegmentationModel
from engine.models.outputs import SegmentationOutput
from tests.engine.pipeline_helpers import (
    GAIN,
    TINY_CARD,
    ArraySource,
    RecordingWriter,
    build_tiny_onnx,
    make_image,
    write_raster,
)

REPO = Path(__file__).resolve().parents[2]
K = TINY_CARD.num_classes
#: The test model's HBIS layers pool its logits by these factors (1/4 and 1/8 of the tile, as BiCoR-Seg's 1/4).
POOLS = (4, 8)
#: Its heatmap logits are the pooled logits times this (so they differ from the final logits).
HEAT_GAIN = 0.5


class PooledHeatmapNet(SegmentationModel):
    """logits = GAIN x normalised bands (pointwise); HBIS layer i = HEAT_GAIN x avg_pool(logits, POOLS[i])."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.size_divisor_px = 3, 8
        self.conv = torch.nn.Conv2d(3, K, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(GAIN * torch.eye(3).reshape(3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        self.check_input(x)
        logits = self.conv(x)
        heat = tuple(HEAT_GAIN * torch.nn.functional.avg_pool2d(logits, p) for p in POOLS)
        return SegmentationOutput(logits=logits, heatmaps=heat)


def export_quiet(model: torch.nn.Module, card: ModelCard, path: Path, heatmaps: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(model, card, path, heatmaps=heatmaps)


@pytest.fixture(scope="module")
def heatmap_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_quiet(PooledHeatmapNet().eval(), TINY_CARD, tmp_path_factory.mktemp("hbis") / "h.onnx", True)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("plain") / "plain.onnx")


def normalised(image: np.ndarray) -> np.ndarray:
    mean = np.asarray(TINY_CARD.norm_mean)[:, None, None]
    std = np.asarray(TINY_CARD.norm_std)[:, None, None]
    return (image.astype(np.float64) / 255.0 - mean) / std


def expected_hbis(image: np.ndarray, layer: int) -> np.ndarray:
    """Softmax over classes of the pooled logits resized by torch's bilinear (align_corners=False)."""
    logits = GAIN * normalised(image)
    _, h, w = logits.shape
    p = POOLS[layer]
    pooled = HEAT_GAIN * logits.reshape(K, h // p, p, w // p, p).mean(axis=(2, 4))
    up = torch.nn.functional.interpolate(
        torch.from_numpy(pooled)[None], size=(h, w), mode="bilinear", align_corners=False
    )[0].numpy()
    up -= up.max(axis=0, keepdims=True)
    exp = np.exp(up)
    return exp / exp.sum(axis=0, keepdims=True)


class Meta:
    """What a test checks of a written raster besides its values."""

    def __init__(self, dataset: rasterio.DatasetReader) -> None:
        self.count, self.descriptions, self.dtypes = dataset.count, dataset.descriptions, dataset.dtypes
        self.nodata, self.crs, self.transform = dataset.nodata, dataset.crs, dataset.transform
        self.height, self.width, self.tags = dataset.height, dataset.width, dataset.tags()


def read_probabilities(path: Path) -> tuple[np.ndarray, np.ma.MaskedArray, Meta]:
    with rasterio.open(path) as dataset:
        raw = dataset.read(masked=True)
        values = raw.astype(np.float64) * np.asarray(dataset.scales)[:, None, None]
        return values, raw, Meta(dataset)


def run_main(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, err.getvalue()


# --- upsampling and normalisation ----------------------------------------------------------------------------


def test_bilinear_upsampling_uses_half_pixel_centres_and_clamps_the_edges() -> None:
    # 2 -> 4 pixels: source positions (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last pixel).
    row = np.array([[0.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(upsample_bilinear(row, 1, 4), [[0.0, 1.0, 3.0, 4.0]])
    np.testing.assert_allclose(upsample_bilinear(row.T, 4, 1)[:, 0], [0.0, 1.0, 3.0, 4.0])


@pytest.mark.parametrize(("size_in", "size_out"), [((8, 8), (32, 32)), ((5, 7), (17, 31)), ((16, 24), (64, 96))])
def test_bilinear_upsampling_equals_torch_align_corners_false(size_in, size_out) -> None:
    values = np.random.default_rng(0).standard_normal((2, 3, *size_in)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(values), size=size_out, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(upsample_bilinear(values, *size_out), expected, atol=1e-5)


def test_hbis_probabilities_are_the_softmax_of_the_upsampled_logits() -> None:
    logits = np.zeros((1, 2, 1, 2), dtype=np.float32)
    logits[0, 0] = [[0.0, 4.0]]  # class 0 upsamples to 0, 1, 3, 4 along the row; class 1 stays 0
    probs = hbis_probabilities(logits, 1, 4)
    expected = 1.0 / (1.0 + np.exp(-np.array([0.0, 1.0, 3.0, 4.0])))
    np.testing.assert_allclose(probs[0, 0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


# --- backends ----------------------------------------------------------------------------------------------


def test_onnx_backend_returns_each_layers_heatmaps_at_tile_size(heatmap_model: Path) -> None:
    backend = OnnxBackend(ModelFile.open(heatmap_model), device="cpu", num_threads=1)
    assert backend.hbis_layer_count == len(POOLS)
    image = make_image(32, 48, seed=3)
    batch = normalised(image)[None].astype(np.float32)
    for layer in range(len(POOLS)):
        probs, heat = backend.predict_with_hbis(batch, layer)
        assert probs.shape == heat.shape == (1, K, 32, 48)
        np.testing.assert_allclose(heat[0], expected_hbis(image, layer), atol=1e-5)
        np.testing.assert_allclose(probs, backend.predict(batch), atol=1e-6)


def test_a_model_without_heatmap_outputs_has_no_hbis_layers(plain_model: Path) -> None:
    assert OnnxBackend(ModelFile.open(plain_model), device="cpu", num_threads=1).hbis_layer_count == 0


@pytest.fixture(scope="module")
def tiny_bicorseg(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, ModelCard, Path]:
    torch.manual_seed(0)
    model = create_model("bicorseg_small", num_classes=3, backbone="atto", embed_dim=32).eval()
    card = TINY_CARD.replace(architecture="bicorseg_small", size_divisor_px=32, tile_size_px=64, overlap_px=0)
    folder = tmp_path_factory.mktemp("bicorseg")
    export_quiet(model, card, folder / "plain.onnx", heatmaps=False)
    return model, card, folder


def test_torch_and_onnx_backends_give_the_same_hbis_heatmaps_of_a_real_bicorseg(tiny_bicorseg) -> None:
    model, card, folder = tiny_bicorseg
    path = export_quiet(model, card, folder / "with_heatmaps.onnx", heatmaps=True)
    onnx_backend = OnnxBackend(ModelFile.open(path), device="cpu", num_threads=1)
    torch_backend = TorchBackend.from_module(model, card, torch.device("cpu"))
    assert onnx_backend.hbis_layer_count == torch_backend.hbis_layer_count == len(model.layers) == 2
    batch = np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        raw = model(torch.from_numpy(batch)).heatmaps
    for layer in range(2):
        _, from_onnx = onnx_backend.predict_with_hbis(batch, layer)
        _, from_torch = torch_backend.predict_with_hbis(batch, layer)
        up = torch.nn.functional.interpolate(raw[layer], size=(64, 96), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(from_torch, torch.softmax(up, dim=1).numpy(), atol=1e-6)
        np.testing.assert_allclose(from_onnx, from_torch, atol=1e-4)


def test_hbis_outputs_added_to_an_export_equal_a_fresh_export_with_heatmaps(tiny_bicorseg) -> None:
    import onnx

    model, card, folder = tiny_bicorseg
    fresh = export_quiet(model, card, folder / "fresh.onnx", heatmaps=True)
    proto = onnx.load(str(folder / "plain.onnx"))
    assert add_hbis_outputs(proto, card.num_classes) == 2
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["logits", "heatmap_0", "heatmap_1"]
    added = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(fresh), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(folder / "plain.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    names = ["logits", "heatmap_0", "heatmap_1"]
    for got, want in zip(added.run(names, {"input": x}), reference.run(names, {"input": x}), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(added.run(["logits"], {"input": x})[0], plain.run(["logits"], {"input": x})[0])
    assert add_hbis_outputs(proto, card.num_classes) == 2  # a second call changes nothing
    assert len(proto.graph.output) == 3


def test_the_embedded_default_model_carries_its_hbis_heatmap_outputs() -> None:
    session = ort.InferenceSession(str(REPO / "resources/models/default.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "heatmap_0", "heatmap_1"]
    x = np.zeros((1, 3, 64, 64), dtype=np.float32)
    heat = session.run(["heatmap_1"], {"input": x})[0]
    assert heat.shape == (1, 5, 16, 16)  # the layer's 1/4 resolution


# --- the tile loop ----------------------------------------------------------------------------------------


class FakeHbisBackend:
    """Class probabilities and 'heatmaps' that are their reverse class order (so the two stacks differ)."""

    name, device, device_reason = "fake", "cpu", "test"
    hbis_layer_count = 1

    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits = GAIN * batch.astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict_with_hbis(self, batch: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
        probs = self.predict(batch)
        return probs, probs[:, ::-1].copy()


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_the_tile_loop_blends_the_extra_channels_with_the_same_weights(tta: str) -> None:
    image = np.random.default_rng(4).standard_normal((3, 45, 37)).astype(np.float32)
    spec = TilingSpec(16, 6)
    backend = FakeHbisBackend()
    writer = RecordingExtraWriter(37)
    stitch_raster(ArraySource(image), writer, make_predictor(backend, K, tta, hbis_layer=0), spec, K,
                  extra_channels=K)  # fmt: skip
    probs, extra = writer.stacked()
    # The fake's heatmaps are its probabilities in reverse order, and blending is linear: the stitched heatmaps
    # must be the stitched probabilities in reverse order, pixel for pixel.
    np.testing.assert_allclose(extra, probs[::-1], atol=1e-6)
    plain = RecordingWriter(37)
    stitch_raster(ArraySource(image), plain, make_predictor(backend, K, tta), spec, K)
    np.testing.assert_allclose(probs, plain.stacked()[0], atol=1e-6)


class RecordingExtraWriter(RecordingWriter):
    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.extras: list[np.ndarray] = []

    def write_rows(self, row_off, probs, valid, extra=None) -> None:  # type: ignore[override]
        assert extra is not None and extra.shape == probs.shape
        super().write_rows(row_off, probs, valid)
        self.extras.append(extra.copy())

    def stacked(self):  # type: ignore[override]
        probs, _ = super().stacked()
        return probs, np.concatenate(self.extras, axis=1)


# --- the command line ------------------------------------------------------------------------------------


def test_cli_writes_the_last_layers_heatmaps_one_band_per_class(tmp_path: Path, heatmap_model: Path) -> None:
    image = make_image(32, 32, seed=5)
    raster = write_raster(tmp_path / "in.tif", image)
    out, hbis = tmp_path / "classes.tif", tmp_path / "hbis.tif"
    code, err = run_main(["segment", str(raster), "-o", str(out), "--hbis-heatmaps", str(hbis), "--model",
                          str(heatmap_model), "--overlap", "0", "-q"])  # fmt: skip
    assert code == 0, err
    values, _raw, dataset = read_probabilities(hbis)
    assert dataset.count == K and dataset.descriptions == TINY_CARD.class_names
    assert dataset.dtypes[0] == "uint16" and dataset.nodata == 65535
    assert dataset.tags["hbis_layer"] == "1"
    with rasterio.open(raster) as src:
        assert dataset.crs == src.crs and dataset.transform == src.transform
    # One 32 px tile covers the raster: the written heatmaps are that tile's, to the UInt16 quantisation.
    np.testing.assert_allclose(values, expected_hbis(image, 1), atol=1.5e-4)
    np.testing.assert_allclose(values.sum(axis=0), 1.0, atol=1e-9)
    assert 0.0 <= values.min() and values.max() <= 1.0


def test_cli_picks_another_hbis_layer_and_marks_nodata(tmp_path: Path, heatmap_model: Path) -> None:
    image = make_image(40, 56, seed=6)
    image[:, :5, :] = 0
    raster = write_raster(tmp_path / "in.tif", image, nodata=0)
    hbis = tmp_path / "hbis0.tif"
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--hbis-heatmaps", str(hbis),
                          "--hbis-layer", "0", "--model", str(heatmap_model), "-q"])  # fmt: skip
    assert code == 0, err
    values, raw, dataset = read_probabilities(hbis)
    assert dataset.tags["hbis_layer"] == "0"
    assert raw.mask[:, :5, :].all() and not raw.mask[:, 5:, :].any()
    np.testing.assert_allclose(values[:, 5:].sum(axis=0), 1.0, atol=1e-9)
    assert 0.0 <= values[:, 5:].min() and values[:, 5:].max() <= 1.0


@pytest.mark.parametrize("layer", ["2", "7"])
def test_cli_rejects_an_hbis_layer_the_model_does_not_have(tmp_path: Path, heatmap_model: Path, layer: str) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(32, 32))
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--hbis-heatmaps",
                          str(tmp_path / "h.tif"), "--hbis-layer", layer, "--model", str(heatmap_model)])  # fmt: skip
    assert code == EXIT_BAD_INPUT
    assert f"HBIS layer {layer} does not exist" in err and "numbered 0 to 1" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_cli_says_which_models_have_hbis_heatmaps(tmp_path: Path, plain_model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(32, 32))
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--hbis-heatmaps",
                          str(tmp_path / "h.tif"), "--model", str(plain_model)])  # fmt: skip
    assert code == EXIT_BAD_INPUT
    assert "has no HBIS class heatmaps: only BiCoR-Seg models have them" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_bicorseg_exported_without_heatmaps_is_told_to_re_export(tmp_path: Path, tiny_bicorseg) -> None:
    _, _, folder = tiny_bicorseg
    raster = write_raster(tmp_path / "in.tif", make_image(64, 64))
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--hbis-heatmaps",
                          str(tmp_path / "h.tif"), "--model", str(folder / "plain.onnx")])  # fmt: skip
    assert code == EXIT_BAD_INPUT
    assert "exported without its HBIS heatmap outputs" in err and "--heatmaps" in err


def test_cli_hbis_layer_needs_hbis_heatmaps(tmp_path: Path, heatmap_model: Path, capsys) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(32, 32))
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--hbis-layer", "0",
                          "--model", str(heatmap_model)])  # fmt: skip
    assert code == EXIT_BAD_INPUT and "--hbis-heatmaps" in err
    code, _ = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--hbis-layer", "-2"])
    assert code == EXIT_BAD_INPUT and "expected a number >= -1, got -2" in capsys.readouterr().err


def test_hbis_heatmaps_are_resampled_back_to_the_input_grid(tmp_path: Path, heatmap_model: Path) -> None:
    # The card asks for 1 m pixels, the input has 0.5 m: the run goes through the writer's resampling path.
    import onnx

    from engine.model_card import embed_card

    coarse = tmp_path / "coarse.onnx"
    proto = onnx.load(str(heatmap_model))
    embed_card(proto, TINY_CARD.replace(gsd_m=1.0))
    onnx.save(proto, str(coarse))
    image = make_image(48, 40, seed=7)
    raster = write_raster(tmp_path / "in.tif", image)
    hbis = tmp_path / "hbis.tif"
    code, err = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--hbis-heatmaps", str(hbis),
                          "--model", str(coarse), "-q"])  # fmt: skip
    assert code == 0, err
    values, raw, dataset = read_probabilities(hbis)
    assert (dataset.height, dataset.width) == (48, 40) and not raw.mask.any()
    np.testing.assert_allclose(values.sum(axis=0), 1.0, atol=1e-9)
    assert dataset.descriptions == TINY_CARD.class_names


def test_a_torch_checkpoint_gives_the_same_hbis_heatmaps_as_its_onnx_export(tmp_path: Path, tiny_bicorseg) -> None:
    model, card, _ = tiny_bicorseg
    card = card.replace(architecture_args={"backbone": "atto", "embed_dim": 32})
    checkpoint = tmp_path / "tiny_bicorseg.pt"
    torch.save({"state_dict": model.state_dict(), "model_card": card.to_json()}, checkpoint)
    onnx_path = export_quiet(model, card, tmp_path / "tiny_bicorseg.onnx", heatmaps=True)
    raster = write_raster(tmp_path / "in.tif", make_image(64, 96, seed=8))
    written = {}
    for name, path in (("torch", checkpoint), ("onnx", onnx_path)):
        hbis = tmp_path / f"hbis_{name}.tif"
        code, err = run_main(["segment", str(raster), "-o", str(tmp_path / f"c_{name}.tif"), "--hbis-heatmaps",
                              str(hbis), "--hbis-layer", "0", "--model", str(path), "--device", "cpu", "-q"])  # fmt: skip
        assert code == 0, err
        written[name] = read_probabilities(hbis)[0]
    np.testing.assert_allclose(written["torch"], written["onnx"], atol=3e-4)
    np.testing.assert_allclose(written["torch"].sum(axis=0), 1.0, atol=1e-9)
