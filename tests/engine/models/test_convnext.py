"""ConvNeXt encoder: feature shapes, stochastic depth, and loading torchvision / timm / original checkpoints."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.errors import InvalidInputError, ModelLoadError
from engine.models.convnext import CONVNEXT_CONFIGS, ConvNeXt, build_convnext, load_convnext_checkpoint
from tests.engine.models.convnext_layouts import (
    ATTO_DEPTHS,
    ATTO_DIMS,
    facebook_state_dict,
    reference_forward_torchvision,
    timm_state_dict,
    torchvision_state_dict,
)


@pytest.fixture
def atto() -> ConvNeXt:
    torch.manual_seed(0)
    return build_convnext("atto").eval()


def test_forward_features_gives_four_maps_at_declared_channels_and_strides(atto: ConvNeXt) -> None:
    x = torch.randn(2, 3, 64, 96)
    feats = atto.forward_features(x)
    assert atto.out_channels == ATTO_DIMS
    assert atto.strides == (4, 8, 16, 32)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(ATTO_DIMS, (4, 8, 16, 32), strict=True)
    ]


def test_paper_sizes_have_published_parameter_counts() -> None:
    # ImageNet ConvNeXt sizes without the classification head (features only).
    counts = {name: sum(p.numel() for p in build_convnext(name).parameters()) for name in ("atto", "tiny", "base")}
    assert counts["base"] == pytest.approx(87.564e6, rel=1e-4)  # models-spec 3.3
    assert counts["tiny"] == pytest.approx(27.82e6, rel=2e-3)  # 28.59 M total minus the 768 x 1000 head and LN
    assert counts["atto"] == pytest.approx(3.37e6, rel=1e-2)


def test_stochastic_depth_grows_linearly_to_the_configured_rate() -> None:
    model = build_convnext("base")
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage.blocks]
    assert len(rates) == 36
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.5)
    assert rates[18] == pytest.approx(0.5 * 18 / 35)


def test_layer_scale_starts_at_1e_minus_6(atto: ConvNeXt) -> None:
    block = atto.stages[1].blocks[0]
    assert torch.all(block.layer_scale == 1e-6)


def test_torchvision_checkpoint_loads_without_missing_keys_and_matches_reference_forward(atto: ConvNeXt) -> None:
    sd = torchvision_state_dict()
    report = load_convnext_checkpoint(atto, sd)
    assert report.layout == "torchvision"
    assert report.missing_keys == ()
    assert report.unexpected_keys == ()
    assert set(report.dropped_head_keys) == {k for k in sd if k.startswith("classifier.")}
    torch.testing.assert_close(atto.stages[2].blocks[3].fc1.weight, sd["features.5.3.block.3.weight"])
    torch.testing.assert_close(atto.stages[3].downsample.conv.weight, sd["features.6.1.weight"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = atto.forward_features(x)
        expected = reference_forward_torchvision(sd, x, ATTO_DEPTHS)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_timm_checkpoint_loads_without_missing_keys(atto: ConvNeXt, conv_mlp: bool) -> None:
    sd = timm_state_dict(conv_mlp=conv_mlp)
    report = load_convnext_checkpoint(atto, sd)
    assert report.layout == "timm"
    assert report.missing_keys == ()
    assert report.unexpected_keys == ()
    assert len(report.dropped_head_keys) == 4
    torch.testing.assert_close(atto.stages[1].blocks[1].layer_scale, sd["stages.1.blocks.1.gamma"])
    torch.testing.assert_close(
        atto.stages[0].blocks[0].fc2.weight.flatten(), sd["stages.0.blocks.0.mlp.fc2.weight"].flatten()
    )
    torch.testing.assert_close(atto.stem.norm.bias, sd["stem.1.bias"])


def test_original_release_checkpoint_loads_without_missing_keys(atto: ConvNeXt) -> None:
    sd = facebook_state_dict()
    report = load_convnext_checkpoint(atto, {"model": sd})  # the release nests tensors under "model"
    assert report.layout == "facebook"
    assert report.missing_keys == ()
    assert report.unexpected_keys == ()
    torch.testing.assert_close(atto.stages[2].blocks[5].dwconv.weight, sd["stages.2.5.dwconv.weight"])


def test_checkpoint_file_with_wrapper_prefix_round_trips(atto: ConvNeXt, tmp_path) -> None:
    sd = {f"module.{k}": v for k, v in torchvision_state_dict(seed=5).items()}
    path = tmp_path / "convnext_atto.pth"
    torch.save({"state_dict": sd}, path)
    report = load_convnext_checkpoint(atto, path)
    assert report.missing_keys == ()
    torch.testing.assert_close(atto.stem.conv.weight, sd["module.features.0.0.weight"])


def test_partial_checkpoint_reports_missing_and_unexpected_keys(atto: ConvNeXt, caplog) -> None:
    sd = torchvision_state_dict()
    del sd["features.7.1.block.5.bias"]
    sd["features.9.0.weight"] = torch.zeros(3)
    with caplog.at_level(logging.WARNING):
        report = load_convnext_checkpoint(atto, sd)
    assert report.missing_keys == ("stages.3.blocks.1.fc2.bias",)
    assert report.unexpected_keys == ("features.9.0.weight",)
    assert "left 1 keys random" in caplog.text
    with pytest.raises(ModelLoadError, match="missing"):
        load_convnext_checkpoint(atto, sd, strict=True)


def test_checkpoint_of_another_size_is_rejected_with_the_fix(atto: ConvNeXt) -> None:
    sd = torchvision_state_dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384))
    with pytest.raises(ModelLoadError, match="different ConvNeXt size"):
        load_convnext_checkpoint(atto, sd)


def test_missing_file_and_unknown_layout_raise_model_load_error(atto: ConvNeXt, tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_convnext_checkpoint(atto, tmp_path / "nope.pth")
    with pytest.raises(ModelLoadError, match="known layout"):
        load_convnext_checkpoint(atto, {"conv1.weight": torch.zeros(1)})


def test_unknown_size_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInputError, match="base"):
        build_convnext("huge")
    assert {"atto", "tiny", "small", "base"} <= set(CONVNEXT_CONFIGS)


def test_drop_path_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = build_convnext("atto", drop_path_rate=0.9)
    for stage in model.stages:  # make the residual branches non-negligible
        for block in stage.blocks:
            torch.nn.init.ones_(block.layer_scale)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model(x)[-1], model(x)[-1]
    torch.testing.assert_close(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(x)[-1], model(x)[-1]
    assert not torch.allclose(c, d)
