"""ONNX export: parity with torch, dynamic axes, the card in the metadata, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.errors import InvalidInputError
from engine.export import check_onnx_parity, export_onnx, state_dict_sha256
from engine.model_card import ONNX_METADATA_KEY, ModelCard, read_card
from engine.models import SegmentationOutput, create_model
from engine.models.base import SegmentationModel

CLASSES = ("background", "building", "road", "water", "vegetation")


def _card(architecture: str = "hi_resnet_small", **changes: object) -> ModelCard:
    card = ModelCard(
        name="test model",
        architecture=architecture,
        class_names=CLASSES,
        class_colors=("#000000", "#ff0000", "#808080", "#0000ff", "#00ff00"),
        tile_size_px=512,
        overlap_px=64,
        gsd_m=0.5,
    )
    return card.replace(**changes) if changes else card


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Random but non-trivial BatchNorm statistics, so eval mode is not an identity normalisation."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    # Random-init classifiers give logits of std ~0.01, which would make a 1e-3 tolerance meaningless.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("classifier.weight"):
                param.mul_(100.0)
    return model


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = _trained_looking(create_model("hi_resnet_small", num_classes=len(CLASSES)))
    path = export_onnx(model, _card(), tmp_path_factory.mktemp("export") / "model.onnx")
    return model, path


def test_onnx_runtime_matches_torch_on_square_and_non_square_tiles(small_export: tuple[torch.nn.Module, Path]) -> None:
    model, path = small_export
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).logits.std() > 0.3  # the tolerance below is meaningful
    report = check_onnx_parity(model, path, [(512, 512), (384, 640)])
    assert report["max_abs_diff"] < 1e-3
    assert report["argmax_agreement"] >= 0.999
    assert set(report["per_size"]) == {"512x512", "384x640"}


def test_parity_report_measures_a_real_difference(small_export: tuple[torch.nn.Module, Path]) -> None:
    _, path = small_export
    other = create_model("hi_resnet_small", num_classes=len(CLASSES))  # different random weights
    report = check_onnx_parity(other, path, [(64, 64)])
    assert report["max_abs_diff"] > 1e-3
    assert report["argmax_agreement"] < 0.999


def test_export_has_dynamic_batch_and_size_and_named_io(small_export: tuple[torch.nn.Module, Path]) -> None:
    model, path = small_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = np.random.default_rng(0).standard_normal((2, 3, 80, 112)).astype(np.float32)
    (logits,) = session.run(["logits"], {"input": x})
    assert logits.shape == (2, len(CLASSES), 80, 112)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-3)


def test_card_travels_in_the_metadata_with_the_weights_checksum(small_export: tuple[torch.nn.Module, Path]) -> None:
    model, path = small_export
    card = read_card(path)
    assert card == _card(weights_sha256=state_dict_sha256(model))
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["class_names"]) == {str(i): name for i, name in enumerate(CLASSES)}
    assert json.loads(props["resolution"]) == pytest.approx(50.0)
    assert ONNX_METADATA_KEY in props


def test_state_dict_checksum_follows_the_weights() -> None:
    torch.manual_seed(0)
    model = create_model("hi_resnet_small", num_classes=2)
    copy = create_model("hi_resnet_small", num_classes=2)
    copy.load_state_dict(model.state_dict())
    assert state_dict_sha256(copy) == state_dict_sha256(model)
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1.0
    assert state_dict_sha256(copy) != state_dict_sha256(model)


def test_export_restores_training_mode_and_heatmaps_flag_is_harmless_without_heatmaps(tmp_path: Path) -> None:
    model = create_model("hi_resnet_small", num_classes=len(CLASSES)).train()
    path = export_onnx(model, _card(), tmp_path / "m.onnx", heatmaps=True)
    assert model.training
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_card_with_wrong_class_count_is_rejected_and_nothing_written(tmp_path: Path) -> None:
    model = create_model("hi_resnet_small", num_classes=3)
    with pytest.raises(InvalidInputError, match="class_names"):
        export_onnx(model, _card(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    model = create_model("hi_resnet_small", num_classes=len(CLASSES))
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(model, _card(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


class _HeatmapModel(SegmentationModel):
    """Stand-in with BiCoR-Seg's output shape: logits at input size plus two heatmaps at 1/4 and 1/8."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.size_divisor_px = 3, 8
        self.conv = torch.nn.Conv2d(3, len(CLASSES), 3, padding=1)

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        self.check_input(x)
        logits = self.conv(x)
        heatmaps = (torch.nn.functional.avg_pool2d(logits, 4), torch.nn.functional.avg_pool2d(logits, 8))
        return SegmentationOutput(logits=logits, heatmaps=heatmaps)


def test_heatmaps_become_extra_outputs_with_their_own_dynamic_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _HeatmapModel().eval()
    path = export_onnx(model, _card("external"), tmp_path / "h.onnx", heatmaps=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["logits", "heatmap_0", "heatmap_1"]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
    outputs = session.run(names, {"input": x.numpy()})
    np.testing.assert_allclose(outputs[0], expected.logits.numpy(), atol=1e-5)
    assert outputs[1].shape == (2, len(CLASSES), 16, 24)
    assert outputs[2].shape == (2, len(CLASSES), 8, 12)
    np.testing.assert_allclose(outputs[2], expected.heatmaps[1].numpy(), atol=1e-5)


def test_bicorseg_exports_with_heatmaps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("bicorseg_small", num_classes=len(CLASSES), backbone="atto", embed_dim=32).eval()
    path = export_onnx(model, _card("bicorseg_small"), tmp_path / "b.onnx", heatmaps=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["logits"] + [f"heatmap_{i}" for i in range(len(expected.heatmaps))]
    outputs = session.run(names, {"input": x.numpy()})
    np.testing.assert_allclose(outputs[0], expected.logits.numpy(), atol=1e-3)


@pytest.mark.slow
def test_paper_hi_resnet_exports_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _trained_looking(create_model("hi_resnet", num_classes=len(CLASSES)))
    path = export_onnx(model, _card("hi_resnet"), tmp_path / "full.onnx")
    report = check_onnx_parity(model, path, [(512, 512), (384, 640)])
    assert report["max_abs_diff"] < 1e-3
    assert report["argmax_agreement"] >= 0.999


def test_exported_file_is_readable_by_others_like_any_new_file(small_export: tuple[torch.nn.Module, Path]) -> None:
    import os
    import stat

    _, path = small_export
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
