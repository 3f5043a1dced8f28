"""The learned, image-guided upsampler of ``bicorseg_small_lu`` (engine.models.learned_upsampler)."""

from __future__ import annotations

import pytest
import torch

from engine.errors import InvalidInputError
from engine.export import export_onnx
from engine.model_card import ModelCard
from engine.models import create_model
from engine.models.bicorseg import BiCoRSeg, PixelShuffleUpsampler, bicorseg_small, bicorseg_small_lu
from engine.models.from_onnx import model_from_onnx
from engine.models.learned_upsampler import GuidedUpsampler

TINY = {"backbone": "atto", "embed_dim": 32}


def test_small_lu_differs_from_small_only_in_the_upsampler() -> None:
    plain, guided = bicorseg_small(num_classes=5), bicorseg_small_lu(num_classes=5)
    assert isinstance(plain.upsampler, PixelShuffleUpsampler)
    assert isinstance(guided.upsampler, GuidedUpsampler)
    outside = {k: v.shape for k, v in plain.state_dict().items() if not k.startswith("upsampler.")}
    assert outside == {k: v.shape for k, v in guided.state_dict().items() if not k.startswith("upsampler.")}
    extra = sum(p.numel() for p in guided.upsampler.parameters())
    assert 5_000 < extra < 20_000  # a light decoder: well under 1 % of the 5.3 M parameters


def test_paper_configurations_keep_the_pixel_shuffle_upsampler() -> None:
    for name in ("bicorseg", "bicorseg_small", "bicorseg_hi_resnet"):
        options = {"backbone": "hi_resnet_small"} if name == "bicorseg_hi_resnet" else {"backbone": "atto"}
        model = create_model(name, num_classes=3, embed_dim=32, **options)
        assert isinstance(model.upsampler, PixelShuffleUpsampler), name


def test_constant_input_gives_a_constant_field_where_pixel_shuffle_gives_a_lattice() -> None:
    # The lattice of the paper's head: each of the 16 sub-pixel positions has its own channels, so one constant
    # feature vector becomes a 4-pixel periodic pattern. The guided upsampler interpolates, so it stays constant.
    torch.manual_seed(0)
    features = torch.randn(1, 32, 1, 1).expand(1, 32, 16, 16).contiguous()
    image = torch.full((1, 3, 64, 64), 0.3)
    lattice = PixelShuffleUpsampler(32)(features)[..., 8:-8, 8:-8]
    assert lattice.std(dim=(-2, -1)).max() > 1e-2
    guided = GuidedUpsampler(32, 3)
    with torch.no_grad():
        for p in guided.parameters():  # weights of a trained look: no accidental symmetry from the initialisation
            p.add_(0.1 * torch.randn_like(p))
        field = guided(features, guided.image_features(image))[..., 8:-8, 8:-8]
    assert field.shape[1] == 2
    assert field.std(dim=(-2, -1)).max() < 1e-5


def test_unknown_upsampler_is_refused_naming_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="pixel_shuffle, guided"):
        bicorseg_small(num_classes=3, upsampler="nearest")


def test_onnx_export_of_small_lu_comes_back_as_the_same_torch_model(tmp_path) -> None:
    # The default model must stay recoverable from its ONNX file for fine-tuning: no folded batch norm.
    torch.manual_seed(1)
    model: BiCoRSeg = create_model("bicorseg_small_lu", num_classes=3, **TINY).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("norm.weight", "norm.bias", "layer_scale")):
                tensor.add_(0.1 * torch.randn_like(tensor))
    card = ModelCard(name="tiny", architecture="bicorseg_small_lu", class_names=("a", "b", "c"),
                     class_colors=("#000000", "#111111", "#222222"), architecture_args=TINY, tile_size_px=64,
                     overlap_px=8)  # fmt: skip
    export_onnx(model, card, tmp_path / "lu.onnx")
    rebuilt, recovery = model_from_onnx(tmp_path / "lu.onnx", card)
    assert any(k.startswith("upsampler.") for k in recovery.recovered)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).logits, model(x).logits, atol=1e-5, rtol=1e-4)
