"""An ONNX export of an engine model becomes the same torch model again (engine.models.from_onnx)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ModelLoadError
from engine.export import export_onnx
from engine.model_card import ModelCard
from engine.models import create_model
from engine.models.from_onnx import model_from_onnx

TINY = {"backbone": "atto", "embed_dim": 32}


def _card(architecture: str = "bicorseg_small", args=None) -> ModelCard:
    return ModelCard(name="tiny", architecture=architecture, class_names=("a", "b", "c"),
                     class_colors=("#000000", "#111111", "#222222"), architecture_args=TINY if args is None else args,
                     tile_size_px=64, overlap_px=8)  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    model = create_model("bicorseg_small", num_classes=3, **TINY).eval()
    with torch.no_grad():  # make it look trained: no two norms equal, so nothing is shared in the graph by accident
        for name, tensor in model.state_dict().items():
            if name.endswith(("norm.weight", "norm.bias", "layer_scale")):
                tensor.add_(0.1 * torch.randn_like(tensor))
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, _card(), path)
    return path, model


def test_every_inference_weight_comes_back_exactly(exported):
    path, original = exported
    rebuilt, recovery = model_from_onnx(path, _card())
    reference = original.state_dict()
    for key in recovery.recovered:
        assert torch.equal(rebuilt.state_dict()[key], reference[key]), key
    assert recovery.not_in_graph == ("aux_classifier.weight",)  # a training-only head
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x).logits, original(x).logits, atol=1e-5)


def test_a_freshly_initialised_model_with_shared_initializers_comes_back(tmp_path):
    # Fresh norms are all ones: the exporter merges equal initializers behind Identity nodes.
    model = create_model("bicorseg_small", num_classes=3, **TINY).eval()
    export_onnx(model, _card(), tmp_path / "fresh.onnx")
    rebuilt, recovery = model_from_onnx(tmp_path / "fresh.onnx", _card())
    assert recovery.max_abs_diff < 1e-4
    assert all(torch.equal(rebuilt.state_dict()[k], model.state_dict()[k]) for k in recovery.recovered)


def test_a_card_of_another_architecture_is_refused(exported):
    path, _ = exported
    with pytest.raises(ModelLoadError, match="not an export of architecture") as error:
        model_from_onnx(path, _card(args={"backbone": "atto", "embed_dim": 48}))
    assert "torch checkpoint" in str(error.value)


@pytest.mark.slow
def test_folded_batch_norm_is_refused_with_the_fix(tmp_path):
    model = create_model("hi_resnet_small", num_classes=3).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2.0)
    card = _card("hi_resnet_small", {})
    export_onnx(model, card, tmp_path / "hi.onnx")
    with pytest.raises(ModelLoadError, match="does not reproduce its logits") as error:
        model_from_onnx(tmp_path / "hi.onnx", card)
    assert "give the torch checkpoint (.pt)" in str(error.value)


def test_an_int8_model_is_refused(exported, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, _ = exported
    quantize_dynamic(str(path), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8)
    with pytest.raises(ModelLoadError, match="int8-quantised"):
        model_from_onnx(tmp_path / "int8.onnx", _card())


@pytest.mark.slow
def test_the_embedded_default_model_comes_back():
    from engine.model_file import ModelFile

    default = ModelFile.open(None)
    _rebuilt, recovery = model_from_onnx(default.path, default.card)
    assert recovery.max_abs_diff < 1e-4 and recovery.not_in_graph == ("aux_classifier.weight",)
    assert np.isfinite(recovery.max_abs_diff)
