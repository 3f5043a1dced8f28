"""Hi-ResNet specifics: parameter budget vs the paper, output semantics, drop-path schedule, blocks and layers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInputError
from engine.models import create_model
from engine.models.base import nearest_valid_size
from engine.models.hi_resnet import HI_RESNET, HI_RESNET_SMALL, HiResNet, HiResNetConfig, drop_path_schedule
from engine.models.hi_resnet_blocks import FunnelBlock, InfoAggregationBlock
from engine.models.layers import DropPath, WindowAttention, window_partition, window_reverse

TINY: dict[str, Any] = {
    "stem_channels": 8,
    "funnel_channels": 16,
    "funnel_blocks": 2,
    "branch_channels": (16, 32, 64),
    "stage_blocks": (1, 1),
    "stage_modules": (1, 2),
    "coarse_head_channels": 16,
    "ocr_channels": 16,
    "ocr_key_channels": 8,
    "aspp_dilations": (2, 4, 6),
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- parameter budget (paper: 26.0 M; spec 2.6 measured 25.25 M for K = 7) ------------------------------------


def test_paper_config_parameter_count_is_within_3_percent_of_the_paper() -> None:
    model = create_model("hi_resnet", num_classes=7)
    assert abs(_count(model) - 26.0e6) <= 0.03 * 26.0e6


def test_paper_config_parts_match_the_spec_budget() -> None:
    model = create_model("hi_resnet", num_classes=7)
    assert _count(model.stem) == pytest.approx(0.039e6, abs=1e3)
    assert _count(model.funnel) == pytest.approx(4.034e6, abs=1e3)
    assert _count(model.coarse_head) == pytest.approx(1.553e6, abs=1e3)
    assert _count(model.refined_head) + _count(model.classifier) == pytest.approx(3.683e6, abs=3e3)
    assert _count(model) == pytest.approx(25.25e6, abs=0.01e6)


def test_code_faithful_ca_variant_matches_the_spec_budget() -> None:
    assert _count(create_model("hi_resnet_ca", num_classes=7)) == pytest.approx(54.34e6, abs=0.01e6)


@pytest.mark.parametrize(("channels", "expected"), [(48, 15_516), (96, 56_376), (192, 214_128)])
def test_ia_block_parameters_follow_the_spec_formula(channels: int, expected: int) -> None:
    assert _count(InfoAggregationBlock(channels)) == expected


def test_small_variant_is_cpu_sized() -> None:
    assert 1e6 <= _count(create_model("hi_resnet_small", num_classes=7)) <= 3e6


# --- configuration --------------------------------------------------------------------------------------------


def test_paper_config_is_table_ii() -> None:
    assert HI_RESNET.branch_channels == (48, 96, 192)
    assert (HI_RESNET.funnel_blocks, *HI_RESNET.stage_blocks) == (4, 4, 12)
    assert HI_RESNET.stage_modules == (1, 4)
    assert HI_RESNET.size_divisor_px == 16


def test_drop_path_schedule_matches_the_authors_code() -> None:
    funnel, stages = drop_path_schedule(HI_RESNET)
    step = 0.5 / 23  # linspace(0, 0.5, 24)
    assert funnel == pytest.approx([0.0, step, 2 * step, 3 * step])
    assert stages[0] == pytest.approx([4 * step])
    assert stages[1] == pytest.approx([8 * step, 9 * step, 10 * step, 11 * step])


def test_every_block_of_a_module_uses_the_module_rate() -> None:
    model = HiResNet(3, HI_RESNET_SMALL)
    _, stages = drop_path_schedule(HI_RESNET_SMALL)
    for stage, rates in zip(model.stages, stages, strict=True):
        for module, rate in zip(stage, rates, strict=True):
            found = [m.drop_prob for m in module.branches.modules() if isinstance(m, DropPath)]
            assert found
            assert found == pytest.approx([rate] * len(found))


def test_json_options_round_trip_through_to_dict() -> None:
    options = json.loads(json.dumps(HI_RESNET_SMALL.to_dict()))
    assert HiResNetConfig().replace(**options) == HI_RESNET_SMALL


def test_unknown_option_raises_listing_valid_options() -> None:
    with pytest.raises(InvalidInputError, match="branch_channels"):
        create_model("hi_resnet", num_classes=3, channel_widths=[1, 2, 3])


def test_mismatched_stage_lists_raise() -> None:
    with pytest.raises(InvalidInputError, match="stage_blocks"):
        create_model("hi_resnet", num_classes=3, stage_blocks=[4])


# --- outputs ----------------------------------------------------------------------------------------------------


def _capture_coarse(model: HiResNet) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    model.coarse_head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    return captured


def test_eval_logits_are_coarse_plus_refined() -> None:
    torch.manual_seed(0)
    model = create_model("hi_resnet", num_classes=4, **TINY).eval()
    captured = _capture_coarse(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    coarse = F.interpolate(captured[0], size=(64, 96), mode="bilinear", align_corners=True)
    assert out.refined_logits is not None
    torch.testing.assert_close(out.logits, coarse + out.refined_logits)
    assert not torch.allclose(out.logits, out.refined_logits)


def test_train_logits_are_refined_and_aux_is_coarse() -> None:
    torch.manual_seed(0)
    model = create_model("hi_resnet", num_classes=4, drop_path_rate=0.0, dropout=0.0, **TINY).train()
    captured = _capture_coarse(model)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.aux_logits is not None
    torch.testing.assert_close(
        out.aux_logits, F.interpolate(captured[0], size=(64, 64), mode="bilinear", align_corners=True)
    )
    assert out.refined_logits is out.logits


def test_sizes_whose_deepest_branch_is_not_a_window_multiple_work() -> None:
    # 80 / 16 = 5 and 112 / 16 = 7: the 1/16 branch is padded to the 8-px window inside the attention.
    model = create_model("hi_resnet", num_classes=2, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 80, 112)).logits.shape == (1, 2, 80, 112)


def test_invalid_size_error_names_nearest_valid_size() -> None:
    model = create_model("hi_resnet_small", num_classes=2).eval()
    with pytest.raises(InvalidInputError, match="nearest valid size 96x128 px"):
        model(torch.randn(1, 3, 100, 130))


def test_paper_config_forward_at_64px() -> None:
    model = create_model("hi_resnet", num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 7, 64, 64)


# --- blocks and layers ----------------------------------------------------------------------------------------


def test_funnel_block_starts_close_to_identity() -> None:
    block = FunnelBlock(16, 16).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x, atol=1e-3, rtol=0)


def test_drop_path_drops_whole_samples_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(4000, 3, 2, 2))
    per_sample = out.flatten(1)
    values = per_sample.unique()
    assert len(values) == 2
    assert values[0].item() == 0.0
    assert values[1].item() == pytest.approx(1.0 / 0.75)
    assert (per_sample.min(dim=1).values == per_sample.max(dim=1).values).all()
    assert per_sample.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(layer.eval()(per_sample), per_sample)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 4),
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    window=st.sampled_from([2, 4]),
)
def test_window_partition_round_trips(batch: int, channels: int, rows: int, cols: int, window: int) -> None:
    x = torch.randn(batch, channels, rows * window, cols * window)
    tokens = window_partition(x, window)
    assert tokens.shape == (batch * rows * cols, window * window, channels)
    assert torch.equal(window_reverse(tokens, window, batch, rows * window, cols * window), x)


def test_window_partition_groups_pixels_of_one_window() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    tokens = window_partition(x, 2)
    assert tokens[0, :, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert tokens[1, :, 0].tolist() == [2.0, 3.0, 6.0, 7.0]


@settings(max_examples=15, deadline=None)
@given(height=st.integers(3, 20), width=st.integers(3, 20), row=st.integers(0, 19), col=st.integers(0, 19))
def test_window_attention_mixes_only_within_a_window(height: int, width: int, row: int, col: int) -> None:
    row, col = row % height, col % width
    torch.manual_seed(0)
    attention = WindowAttention(8, 2, window=4).eval()
    x = torch.randn(1, 8, height, width)
    changed = x.clone()
    changed[0, :, row, col] += 5.0
    with torch.no_grad():
        diff = (attention(changed) - attention(x)).abs().amax(dim=(0, 1))
    same_window = torch.zeros(height, width, dtype=torch.bool)
    top, left = (row // 4) * 4, (col // 4) * 4
    same_window[top : top + 4, left : left + 4] = True
    assert diff.shape == (height, width)
    outside = diff[~same_window]
    assert outside.numel() == 0 or outside.max().item() <= 1e-6
    assert diff[same_window].max().item() > 0.0


@settings(max_examples=50, deadline=None)
@given(size=st.integers(0, 2000), divisor=st.integers(1, 128))
def test_nearest_valid_size_is_a_close_multiple(size: int, divisor: int) -> None:
    nearest = nearest_valid_size(size, divisor)
    assert nearest % divisor == 0
    assert nearest >= divisor
    assert abs(nearest - size) <= max(divisor / 2, divisor - size)


def test_paper_stem_puts_batch_norm_before_each_downsampling_conv() -> None:
    from torch import nn

    from engine.models import create_model

    with torch.device("meta"):  # structure only: no memory, no init cost
        paper = create_model("hi_resnet", num_classes=6)
        small = create_model("hi_resnet_small", num_classes=6)
    for block, in_channels in zip(paper.stem, (3, 64), strict=True):
        norm, conv, act = block
        assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == in_channels  # BN of the conv's input
        assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2) and conv.kernel_size == (3, 3)
        assert isinstance(act, nn.GELU)
    # The CPU variant keeps conv -> BN -> GELU, so its existing checkpoints still load: same keys and shapes.
    stem_keys = {k: tuple(v.shape) for k, v in small.state_dict().items() if k.startswith("stem.")}
    assert stem_keys["stem.0.0.weight"] == (32, 3, 3, 3)
    assert stem_keys["stem.0.1.weight"] == (32,)
    assert stem_keys["stem.1.0.weight"] == (32, 32, 3, 3)
