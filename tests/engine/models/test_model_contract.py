"""Contract every registered model must honour (parametrised over engine.models.list_models()).

Heavy architectures are built with small widths through their own options, so the whole file runs in seconds on a
2-core CPU; the full paper configurations are covered by parameter-count tests in the per-model files.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from engine.errors import InvalidInputError
from engine.models import SegmentationOutput, create_model, list_models

NUM_CLASSES = 3

_TINY_HI_RESNET: dict[str, Any] = {
    "stem_channels": 8,
    "funnel_channels": 16,
    "funnel_blocks": 2,
    "branch_channels": [16, 32, 64],
    "stage_blocks": [1, 1],
    "stage_modules": [1, 2],
    "coarse_head_channels": 16,
    "ocr_channels": 16,
    "ocr_key_channels": 8,
    "aspp_dilations": [2, 4, 6],
}
#: Small-but-same-topology options per model; models not listed are built with their defaults.
TEST_OPTIONS: dict[str, dict[str, Any]] = {
    "hi_resnet": _TINY_HI_RESNET,
    "hi_resnet_ca": _TINY_HI_RESNET,
    "bicorseg": {"backbone": "atto", "embed_dim": 32},
    "bicorseg_small": {"backbone": "atto", "embed_dim": 32},
    "bicorseg_small_lu": {"backbone": "atto", "embed_dim": 32},
    "unet": {"widths": (8, 16, 32)},
    "bicorseg_hi_resnet": {"backbone": "hi_resnet_small", "embed_dim": 32},
}

MODEL_NAMES = list_models()
#: Models without an auxiliary head: the reference U-Net (trained with plain cross-entropy, not a paper model).
WITHOUT_AUX_HEAD = {"unet"}


def _build(name: str, **extra: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {**TEST_OPTIONS.get(name, {}), **extra}
    model: torch.nn.Module = create_model(name, num_classes=NUM_CLASSES, **options)
    return model


def _valid_size(model: torch.nn.Module, step: int) -> int:
    """A valid edge: the smallest multiple of the divisor that is at least 64 px, plus ``step - 2`` divisors."""
    divisor = int(model.size_divisor_px)
    smallest = -(-64 // divisor)  # ceil(64 / divisor)
    return divisor * (smallest + step - 2)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_registry_has_the_documented_models() -> None:
    documented = ("hi_resnet", "hi_resnet_small", "hi_resnet_ca", "bicorseg", "bicorseg_small", "bicorseg_small_lu",
                  "bicorseg_hi_resnet", "unet")  # fmt: skip
    for name in documented:
        assert name in MODEL_NAMES


def test_model_declares_in_channels_and_size_divisor(model_name: str) -> None:
    model = _build(model_name)
    assert model.in_channels == 3
    assert isinstance(model.size_divisor_px, int)
    assert model.size_divisor_px >= 1


def test_eval_returns_logits_at_input_size_for_non_square_input(model_name: str) -> None:
    model = _build(model_name).eval()
    height, width = _valid_size(model, 2), _valid_size(model, 3)
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == (2, NUM_CLASSES, height, width)
    assert out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
    assert out.aux_logits is None


def test_train_forward_gives_aux_logits_and_backward_reaches_every_parameter(model_name: str) -> None:
    model = _build(model_name).train()
    size = _valid_size(model, 2)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.logits.shape == (2, NUM_CLASSES, size, size)
    target = torch.randint(0, NUM_CLASSES, (2, size, size))
    loss = torch.nn.functional.cross_entropy(out.logits, target)
    if model_name in WITHOUT_AUX_HEAD:
        assert out.aux_logits is None
    else:
        assert out.aux_logits is not None
        assert out.aux_logits.shape == (2, NUM_CLASSES, size, size)
        loss = loss + torch.nn.functional.cross_entropy(out.aux_logits, target)
    for heatmap in out.heatmaps:
        loss = loss + heatmap.float().pow(2).mean()
    for embedding in out.class_embeddings:
        loss = loss + embedding.float().pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_is_deterministic(model_name: str) -> None:
    model = _build(model_name).eval()
    size = _valid_size(model, 2)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        first = model(x).logits
        second = model(x.clone()).logits
    assert torch.equal(first, second)


def test_eval_output_of_a_sample_does_not_depend_on_the_rest_of_the_batch(model_name: str) -> None:
    model = _build(model_name).eval()
    size = _valid_size(model, 2)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        together = model(x).logits[1]
        alone = model(x[1:]).logits[0]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_size_not_multiple_of_divisor_raises_naming_nearest_valid_size(model_name: str) -> None:
    model = _build(model_name).eval()
    divisor = model.size_divisor_px
    if divisor == 1:
        pytest.fail("a divisor of 1 accepts every size; this contract test needs a divisor above 1")
    height, width = _valid_size(model, 2) + 1, _valid_size(model, 3) - 1  # nearest: round down / round up
    expected = f"{height - 1}x{width + 1}"
    with pytest.raises(InvalidInputError, match=re.escape(expected)), torch.no_grad():
        model(torch.randn(1, 3, height, width))


def test_wrong_band_count_raises_invalid_input(model_name: str) -> None:
    model = _build(model_name).eval()
    size = _valid_size(model, 2)
    with pytest.raises(InvalidInputError, match="3 input bands"), torch.no_grad():
        model(torch.randn(1, 4, size, size))


def test_in_channels_option_builds_a_model_for_that_many_bands(model_name: str) -> None:
    model = _build(model_name, in_channels=4).eval()
    assert model.in_channels == 4
    size = _valid_size(model, 2)
    with torch.no_grad():
        out = model(torch.randn(1, 4, size, size))
    assert out.logits.shape == (1, NUM_CLASSES, size, size)
